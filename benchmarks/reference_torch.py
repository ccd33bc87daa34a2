"""The original framework's training path in PyTorch, as the reference for the training
benchmark: images kept as uint8 arrays, a torch `DataLoader` (one worker process, pinned
memory on CUDA) turning each sample into a PIL image and through torchvision's transforms
(random crop with padding 4, horizontal flip, rotation up to 15 degrees, then `ToTensor`
and `Normalize`), and the trainer's Python loop (zero the gradients, forward, cross-entropy,
backward, step, then `loss.item()` and the accuracy count of every batch).

The models are the PyTorch modules of `bias_transfer_rs.model`, which carry the Rust
core's architectures, so both sides train the same network. Needs `torchvision==0.28.0`
(the release made for torch 2.13).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler
from torchvision import transforms

from bias_transfer_rs import model as models


@dataclass
class Stage:
    """What one benchmark run trains: the images `[N, C, H, W]` as uint8, their labels, the
    three configs and the indices of the training split."""

    images: np.ndarray
    labels: np.ndarray
    dataset_config: dict[str, Any]
    model_config: dict[str, Any]
    trainer_config: dict[str, Any]
    train_indices: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ImageArrays(Dataset):
    """Samples as torchvision's CIFAR and MNIST datasets give them: a PIL image through
    the transform, and the label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any):
        gray = images.shape[1] == 1
        # torchvision keeps images channels last and builds a PIL image per sample.
        self.images = images[:, 0] if gray else images.transpose(0, 2, 3, 1)
        self.mode = "L" if gray else "RGB"
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index], mode=self.mode)
        return self.transform(image), int(self.labels[index])


def transform(stage: Stage, augment: bool) -> Any:
    """The original's training transform; without augmentation only `ToTensor` and, when
    normalisation is on, `Normalize`."""
    size = int(stage.dataset_config.get("input_size", stage.images.shape[-1]))
    steps: list[Any] = []
    if augment:
        steps += [transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(),
                  transforms.RandomRotation(15)]
    steps.append(transforms.ToTensor())
    if stage.dataset_config.get("apply_data_normalization", True):
        steps.append(transforms.Normalize(stage.mean, stage.std))
    return transforms.Compose(steps)


def device_of(trainer_config: dict[str, Any]) -> torch.device:
    cuda = torch.cuda.is_available() and not trainer_config.get("force_cpu", False)
    return torch.device("cuda" if cuda else "cpu")


def optimizer(module: nn.Module, trainer_config: dict[str, Any]) -> torch.optim.Optimizer:
    """The original trainer's optimiser from its config (Adam, RMSprop or SGD)."""
    name = trainer_config.get("optimizer", "Adam")
    lr = trainer_config.get("lr", 3e-4)
    decay = trainer_config.get("weight_decay", 5e-4)
    params = [p for p in module.parameters() if p.requires_grad]
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay,
                                amsgrad=trainer_config.get("amsgrad", False))
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=decay,
                                   momentum=trainer_config.get("momentum", 0.9))
    return torch.optim.SGD(params, lr=lr, weight_decay=decay,
                           momentum=trainer_config.get("momentum", 0.9))


def batch_size(stage: Stage) -> int:
    return int(stage.dataset_config.get("batch_size", 128))


def check_batches(stage: Stage, warmup: int, steps: int) -> None:
    """Refuse what the Rust core refuses: no timed batch, or more batches than the training
    split holds in full."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"`steps` must be at least 1 and `warmup` at least 0, not {steps} "
                         f"and {warmup}")
    size = batch_size(stage)
    full = len(stage.train_indices) // size
    if full < max(warmup, steps):
        raise ValueError(f"the training split holds {full} full batches of {size}, fewer "
                         f"than the {max(warmup, steps)} asked for")


def build(stage: Stage, seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.device]:
    torch.manual_seed(seed)
    device = device_of(stage.trainer_config)
    module = models.build(stage.model_config).to(device)
    return module, optimizer(module, stage.trainer_config), device


def logits(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The original's models returned logits; ours name them among their outputs."""
    return module(inputs)["logits"]


def train(stage: Stage, augment: bool, warmup: int, steps: int, seed: int) -> float:
    """Images per second of the original's loop over `steps` batches of a fresh epoch,
    after a first epoch cut short after `warmup` batches."""
    check_batches(stage, warmup, steps)
    module, opt, device = build(stage, seed)
    criterion = nn.CrossEntropyLoss()
    data = ImageArrays(stage.images, stage.labels, transform(stage, augment))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size(stage),
                        sampler=SubsetRandomSampler(stage.train_indices.tolist(), generator),
                        num_workers=1, pin_memory=device.type == "cuda")

    def epoch(batches: int) -> int:
        module.train()
        seen, correct, total_loss = 0, 0, 0.0
        for i, (inputs, targets) in enumerate(loader):
            if i == batches:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            opt.zero_grad()
            outputs = logits(module, inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            opt.step()
            total_loss += loss.item()
            correct += outputs.argmax(1).eq(targets).sum().item()
            seen += len(targets)
        return seen

    if warmup:
        epoch(warmup)
    start = time.perf_counter()
    seen = epoch(steps)
    return seen / (time.perf_counter() - start)


def floor(stage: Stage, warmup: int, steps: int, seed: int, batches: int = 4,
          channels_last: bool = False) -> float:
    """Images per second of forward, backward and step alone, on `batches` batches made
    beforehand and already on the device; with `channels_last`, model and batches in that
    memory format."""
    check_batches(stage, warmup, steps)
    module, opt, device = build(stage, seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(memory_format=layout)
    criterion = nn.CrossEntropyLoss()
    size = batch_size(stage)
    prepare = transform(stage, augment=False)
    data = ImageArrays(stage.images, stage.labels, prepare)
    made = []
    for b in range(min(batches, steps)):
        rows = stage.train_indices[b * size:(b + 1) * size]
        inputs = torch.stack([data[int(i)][0] for i in rows]).to(device)
        inputs = inputs.contiguous(memory_format=layout)
        made.append((inputs, torch.as_tensor(stage.labels[rows]).to(device)))
    module.train()

    def step(i: int) -> None:
        inputs, targets = made[i % len(made)]
        opt.zero_grad()
        criterion(logits(module, inputs), targets).backward()
        opt.step()

    for i in range(warmup):
        step(i)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return steps * size / (time.perf_counter() - start)
