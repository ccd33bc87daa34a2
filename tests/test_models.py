"""Parity of the Rust models with the PyTorch modules of the same architecture: the same
parameter names and shapes, state dicts loading both ways, and the same outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import safetensors_io
import torch

import bias_transfer_rs
from bias_transfer_rs import _core
from bias_transfer_rs.model import build, load_weights

CIFAR = {"dataset_cls": "CIFAR10", "input_size": 32, "apply_data_normalization": True}
FASHION = {"dataset_cls": "FashionMNIST", "input_size": 28}

CASES = {
    "resnet18": ({"cnn_builder": "resnet", "type": "18"}, CIFAR),
    "resnet26": ({"cnn_builder": "resnet", "type": "26"}, CIFAR),
    "resnet18-stem5-stride2": ({"cnn_builder": "resnet", "type": "18", "core_stride": 2,
                                "conv_stem_kernel_size": 5}, CIFAR),
    "vgg11": ({"cnn_builder": "vgg", "type": "11"}, CIFAR),
    "vgg11_bn-conv": ({"cnn_builder": "vgg", "type": "11_bn", "readout_type": "conv"}, CIFAR),
    "cnn": ({"cnn_builder": "cnn"}, FASHION),
    "mlp": ({"cnn_builder": "mlp"}, FASHION),
    "cnn-cifar": ({"cnn_builder": "cnn"}, CIFAR),
}


def config(case: str) -> tuple[dict, dict]:
    model, dataset = CASES[case]
    size = dataset["input_size"]
    return {"dataset_cls": dataset["dataset_cls"], "num_classes": 10, "input_size": size,
            **model}, dataset


def randomise_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Give every batch norm statistics and affine terms other than the defaults."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            shape = m.running_mean.shape
            m.running_mean.copy_(torch.randn(shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(shape, generator=gen) * 0.1)
            m.num_batches_tracked.fill_(3)


def batch(model: dict, n: int = 4) -> torch.Tensor:
    channels = 1 if model["dataset_cls"] == "FashionMNIST" and model["cnn_builder"] in (
        "cnn", "mlp") else 3
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, model["input_size"], model["input_size"], generator=gen)


@pytest.mark.parametrize("case", list(CASES))
def test_pytorch_weights_give_the_same_outputs(case: str, tmp_path: Path):
    model_config, dataset_config = config(case)
    torch.manual_seed(0)
    reference = build(model_config)
    with torch.no_grad():
        randomise_batch_norm(reference, 2)
    reference.eval()
    path = tmp_path / "w.safetensors"
    safetensors_io.save(reference.state_dict(), path)

    ours = load_weights(model_config, dataset_config, path)
    x = batch(model_config)
    with torch.no_grad():
        expected = reference(x)
    got = ours(x)
    assert got["logits"].shape == expected["logits"].shape == (4, 10)
    torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["core"], expected["core"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_our_state_dict_loads_strictly_into_pytorch(case: str, tmp_path: Path):
    model_config, dataset_config = config(case)
    path = tmp_path / "w.safetensors"
    _core.init_weights(model_config, 5, path)
    saved = safetensors_io.load(path)
    reference = build(model_config)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in saved.items()} == expected
    reference.load_state_dict(saved, strict=True)
    reference.eval()

    ours = load_weights(model_config, dataset_config, path)
    assert dict(ours.state_dict()).keys() == expected.keys()
    x = batch(model_config)
    with torch.no_grad():
        expected_out = reference(x)
    torch.testing.assert_close(ours(x)["logits"], expected_out["logits"], atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(ours.to_torch()(x)["logits"], expected_out["logits"])


def test_initialisation_is_seeded(tmp_path: Path):
    model_config, _ = config("resnet18")
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path, seed in zip(paths, (5, 5, 6), strict=True):
        _core.init_weights(model_config, seed, path)
    a, b, c = (safetensors_io.load(p) for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["core.conv1.weight"], c["core.conv1.weight"])


@pytest.mark.parametrize("depth, blocks, width", [
    ("18", [2, 2, 2, 2], 512), ("34", [3, 4, 6, 3], 512), ("26", [1, 2, 4, 1], 2048),
    ("38", [2, 3, 5, 2], 2048), ("50", [3, 4, 6, 3], 2048), ("101", [3, 4, 23, 3], 2048),
    ("152", [3, 8, 36, 3], 2048)])
def test_every_resnet_depth_has_its_blocks(depth: str, blocks: list[int], width: int,
                                           tmp_path: Path):
    model_config = {"cnn_builder": "resnet", "type": depth, "num_classes": 100,
                    "dataset_cls": "CIFAR100", "input_size": 32}
    path = tmp_path / "w.safetensors"
    _core.init_weights(model_config, 0, path)
    names = safetensors_io.load(path)
    for stage, count in enumerate(blocks, 1):
        assert f"core.layer{stage}.{count - 1}.conv1.weight" in names
        assert f"core.layer{stage}.{count}.conv1.weight" not in names
    assert tuple(names["readout.weight"].shape) == (100, width)


@pytest.mark.parametrize("model, message", [
    ({"cnn_builder": "resnet", "type": "19"}, "`type` `19` is not a `resnet` model; valid: "
                                              "`18`, `26`, `34`, `38`, `50`, `101`, `152`"),
    ({"cnn_builder": "vgg", "type": "12_bn"}, "`type` `12_bn` is not a `vgg` model"),
    ({"cnn_builder": "transformer"}, "`cnn_builder` `transformer` is unknown"),
    ({"cnn_builder": "vgg", "type": "11", "readout_type": "sparse"},
     "`readout_type` `sparse` is unknown; valid: `dense`, `conv`"),
    ({"cnn_builder": "vgg", "type": "11", "input_size": 28}, "VGG pools five times"),
])
def test_bad_model_configs_name_the_option(model: dict, message: str, tmp_path: Path):
    config = {"dataset_cls": "CIFAR10", "num_classes": 10, "input_size": 32, **model}
    with pytest.raises(bias_transfer_rs.TrainingError, match=re.escape(message)):
        _core.init_weights(config, 0, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


OPTIMISERS = {
    "sgd": {"optimizer": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 5e-4},
    "adam-amsgrad": {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 5e-4, "amsgrad": True},
    "rmsprop": {"optimizer": "RMSprop", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
}


def torch_optimiser(params, trainer: dict) -> torch.optim.Optimizer:
    kind, lr, wd = trainer["optimizer"], trainer["lr"], trainer["weight_decay"]
    if kind == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=trainer["momentum"], weight_decay=wd)
    if kind == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=trainer["momentum"], weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd, amsgrad=trainer.get("amsgrad", False))


@pytest.mark.parametrize("optimiser", list(OPTIMISERS))
@pytest.mark.parametrize("case, steps", [("resnet18", 1), ("cnn", 1), ("cnn", 3)])
def test_optimiser_steps_match_pytorch(case: str, steps: int, optimiser: str, tmp_path: Path):
    """From the same weights and batch, training steps of ours and of torch.optim give the
    same parameters and batch-norm statistics. (Further steps of a ResNet on one batch of 8
    descend so steeply that float rounding differences between the two grow past 1e-5.)"""
    model_config, _ = config(case)
    trainer = OPTIMISERS[optimiser]
    torch.manual_seed(0)
    reference = build(model_config)
    with torch.no_grad():
        randomise_batch_norm(reference, 3)
    start = tmp_path / "start.safetensors"
    safetensors_io.save(reference.state_dict(), start)
    x = batch(model_config, n=8)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(4))
    out = tmp_path / "out.safetensors"
    _core.train_steps(model_config, trainer, start, x.numpy(), y.numpy(), steps, out)
    ours = safetensors_io.load(out)

    # The core trains on the CPU with its convolution weights channels last, as this
    # module does after `to(memory_format=torch.channels_last)`; oneDNN's rounding depends
    # on the layout (a ResNet-18 step in the default layout differs by about 2e-4).
    reference = reference.to(memory_format=torch.channels_last).train()
    opt = torch_optimiser(reference.parameters(), trainer)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(x)["logits"], y).backward()
        opt.step()
    moved = 0
    for name, expected in reference.state_dict().items():
        got = ours[name].to(expected.dtype)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=name)
        moved += not torch.equal(expected, safetensors_io.load(start)[name])
    assert moved > len(ours) // 2  # the steps changed most tensors


def test_loading_weights_is_strict_and_names_the_culprit(tmp_path: Path):
    model_config, dataset_config = config("cnn")
    good = build(model_config).state_dict()
    cases = {
        "extra": ({**good, "extra.weight": torch.zeros(3)},
                  "holds tensors the model lacks: `extra.weight`"),
        "missing": ({k: v for k, v in good.items() if k != "readout.bias"},
                    "lacks `readout.bias`"),
        "shape": ({**good, "readout.bias": torch.zeros(11)},
                  "`readout.bias` has shape [11], the model [10]"),
        "integer": ({**good, "readout.weight": good["readout.weight"].long()},
                    "`readout.weight` is Int64, the model holds Float"),
    }
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        safetensors_io.save(state, path)
        with pytest.raises(bias_transfer_rs.TrainingError, match=re.escape(message)):
            load_weights(model_config, dataset_config, path)
    pt = tmp_path / "w.pt"
    torch.save(good, pt)
    with pytest.raises(bias_transfer_rs.TrainingError, match="not a `.safetensors` file"):
        load_weights(model_config, dataset_config, pt)
    with pytest.raises(bias_transfer_rs.TrainingError, match="no such file"):
        load_weights(model_config, dataset_config, tmp_path / "none.safetensors")
    # Other float widths convert, as PyTorch's `load_state_dict` converts them.
    path = tmp_path / "double.safetensors"
    safetensors_io.save({k: v.double() for k, v in good.items()}, path)
    load_weights(model_config, dataset_config, path)


@pytest.mark.parametrize("model, message", [
    ({"cnn_builder": "resnet", "type": "19"}, "`type` `19` is not a `resnet` model"),
    ({"cnn_builder": "vgg", "type": "11bn"}, "`type` `11bn` is not a `vgg` model"),
    ({"cnn_builder": "vgg", "type": "11", "readout_type": "sparse"},
     "`readout_type` `sparse` is unknown"),
    ({"cnn_builder": "vgg", "type": "11", "input_size": 28}, "VGG pools five times"),
    ({"cnn_builder": "cnn", "num_classes": 0}, "`num_classes` must be at least 1"),
])
def test_torch_modules_are_checked_as_the_core_checks(model: dict, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        build({"dataset_cls": "CIFAR10", "input_size": 32, **model})
