"""Training throughput: the original's PyTorch path (a), bias_transfer_rs (b) and the compute
floor (c), side by side in one run, with and without the original's augmentation.

    python benchmarks/training.py [--models cnn resnet18] [--repeats 5]
    python benchmarks/training.py --variants    # what lifts PyTorch's own floor

(a) is `reference_torch.train`: a torch DataLoader with per-sample torchvision transforms
and the trainer's Python loop. (b) is the Rust trainer's own epoch loop
(`_core.train_throughput`): batches and their augmentation made on other threads while the
model trains. (c) is forward, backward and step on batches already in memory, with no data
pipeline: in the Rust core, in PyTorch with its defaults, and in PyTorch with the two
changes the Rust core makes (weights channels last, glibc's allocator tuned); the fastest
of the three is the floor. Every contender trains the same network (the modules of
`bias_transfer_rs.model` carry the Rust architectures) with the same batch size and
optimiser, for the same number of batches of a fresh epoch, after an untimed warm-up epoch
cut short. Every run has a fresh interpreter of its own; runs of (a) and (b) alternate. The
table shows medians and the ratios b/a and c/b.

The small CNN trains on the real Fashion-MNIST (`--fashion-dir`); ResNet-18 on CIFAR-10
from `--cifar-dir`, or, where that is not given, on random uint8 images written in the
CIFAR-10 binary layout (the figures do not depend on the pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bias_transfer_rs
from bias_transfer_rs import _core

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_torch  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
STATS = {
    "FashionMNIST": ((0.2860,), (0.3530,)),
    "CIFAR10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
}


@dataclass
class Workload:
    name: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    warmup: int
    steps: int


def workloads(args: argparse.Namespace, cifar_dir: Path) -> list[Workload]:
    # The original trainer's defaults: Adam, lr 3e-4, weight decay 5e-4, batches of 128.
    cnn = Workload(
        "small CNN, Fashion-MNIST",
        {"dataset_cls": "FashionMNIST", "data_dir": args.fashion_dir, "input_size": 28},
        {"cnn_builder": "cnn", "dataset_cls": "FashionMNIST", "input_size": 28,
         "num_classes": 10},
        default(args.warmup, 5), default(args.steps, 60))
    resnet = Workload(
        "ResNet-18, CIFAR-10" + ("" if args.cifar_dir else " shaped"),
        {"dataset_cls": "CIFAR10", "data_dir": str(cifar_dir), "input_size": 32},
        {"cnn_builder": "resnet", "type": "18", "dataset_cls": "CIFAR10", "input_size": 32,
         "num_classes": 10},
        default(args.warmup, 2), default(args.steps, 8))
    chosen = {"cnn": cnn, "resnet18": resnet}
    return [chosen[m] for m in args.models]


def default(value: int | None, otherwise: int) -> int:
    return otherwise if value is None else value


def write_cifar_shaped(root: Path, n_train: int, n_test: int = 200) -> None:
    """Random images and labels in the layout `cifar-10-binary.tar.gz` unpacks to."""
    out = root / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    for name, count in [*zip(names, np.array_split(np.arange(n_train), 5), strict=True),
                        ("test_batch.bin", np.arange(n_test))]:
        n = len(count)
        records = np.concatenate([rng.integers(0, 10, (n, 1), dtype=np.uint8),
                                  rng.integers(0, 256, (n, 3072), dtype=np.uint8)], axis=1)
        (out / name).write_bytes(records.tobytes())


def stage(work: Workload, augment: bool) -> reference_torch.Stage:
    dataset = {**work.dataset, "apply_data_augmentation": augment}
    (images, labels), _ = _core.load_dataset(dataset, ".")
    # The training share of the original's split (valid_size 0.1), in a random order.
    rng = np.random.default_rng(0)
    train = rng.permutation(len(labels))[: int(0.9 * len(labels))]
    mean, std = STATS[dataset["dataset_cls"]]
    return reference_torch.Stage(images, labels, dataset, work.model, trainer_config(),
                                 np.sort(train), mean, std)


def trainer_config() -> dict[str, Any]:
    return {"optimizer": "Adam", "lr": 3e-4, "weight_decay": 5e-4, "num_epochs": 2,
            "lr_milestones": []}


def ours(work: Workload, augment: bool, seed: int, floor: bool = False) -> float:
    dataset = {**work.dataset, "apply_data_augmentation": augment}
    return _core.train_throughput(dataset, work.model, trainer_config(), ".", seed,
                                  work.warmup, work.steps, floor=floor)


# glibc's allocator as the Rust core sets it up for training (`train::tune_allocator`).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
CONTENDERS = {
    # name: (what runs, environment added)
    "reference": ("reference", {}),
    "ours": ("ours", {}),
    "floor, ours": ("floor-ours", {}),
    "floor, torch": ("floor-torch", {}),
    # PyTorch with the two changes the Rust core makes: channels last, the allocator tuned.
    "floor, torch tuned": ("floor-torch-cl", TUNED_MALLOC),
}
# What lifts the floor, tried one by one on PyTorch's own loop (`--variants`):
# name: (what runs, environment added, libtorch threads).
VARIANTS = {
    "defaults": ("floor-torch", {}, None),
    "1 thread": ("floor-torch", {}, 1),
    "allocator tuned": ("floor-torch", TUNED_MALLOC, None),
    "channels last": ("floor-torch-cl", {}, None),
    "channels last, allocator tuned": ("floor-torch-cl", TUNED_MALLOC, None),
}


def run_one(work: Workload, what: str, augment: bool, seed: int) -> float:
    """One contender's run, in this process."""
    if what == "ours":
        return ours(work, augment, seed)
    if what == "floor-ours":
        return ours(work, False, seed, floor=True)
    st = stage(work, augment)
    if what == "reference":
        return reference_torch.train(st, augment, work.warmup, work.steps, seed)
    return reference_torch.floor(st, work.warmup, work.steps, seed,
                                 channels_last=what == "floor-torch-cl")


def spawn(work: Workload, what: str, env: dict[str, str], augment: bool, seed: int,
          threads: int | None) -> float:
    """One run in a fresh interpreter, so that no run inherits another's allocator state or
    threads."""
    job = {"work": asdict(work), "what": what, "augment": augment, "seed": seed,
           "threads": threads}
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)],
                         env={**os.environ, **env}, capture_output=True, text=True)
    if out.returncode != 0:
        # The child's own error is its last line (the exception and its message).
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        raise SystemExit(f"{work.name}, {what}: {lines[-1]}")
    return float(out.stdout.strip().splitlines()[-1])


def check(work: Workload) -> None:
    """Read the workload's data once and check its size here, before any run is spawned."""
    try:
        reference_torch.check_batches(stage(work, False), work.warmup, work.steps)
    except (ValueError, _core.DataError, _core.TrainingError) as err:
        raise SystemExit(f"{work.name}: {err}") from None


def measure(args: argparse.Namespace, work: Workload) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    for seed in range(args.repeats):
        # (a) and (b) alternate; which goes first alternates too.
        for aug in (False, True):
            pair = ["reference", "ours"] if seed % 2 == 0 else ["ours", "reference"]
            for name in pair:
                value = spawn(work, *CONTENDERS[name], aug, seed, args.threads)
                runs.setdefault(f"{name}, {'aug' if aug else 'plain'}", []).append(value)
                print(f"  {name:22} {'augmented' if aug else 'plain':9} {value:8.1f} images/s",
                      flush=True)
        for name in ("floor, ours", "floor, torch", "floor, torch tuned"):
            value = spawn(work, *CONTENDERS[name], False, seed, args.threads)
            runs.setdefault(name, []).append(value)
            print(f"  {name:32} {value:8.1f} images/s", flush=True)
    return runs


def measure_variants(args: argparse.Namespace, work: Workload) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    for seed in range(args.repeats):
        for name, (what, env, threads) in VARIANTS.items():
            value = spawn(work, what, env, False, seed, threads or args.threads)
            runs.setdefault(name, []).append(value)
            print(f"  floor, torch, {name:32} {value:8.1f} images/s", flush=True)
    return runs


def variants_table(results: dict[str, dict[str, list[float]]]) -> str:
    names = list(VARIANTS)
    lines = ["| model | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
    for model, runs in results.items():
        base = statistics.median(runs["defaults"])
        cells = [f"{statistics.median(runs[n]):.0f} ({statistics.median(runs[n]) / base:.2f}x)"
                 for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| model | augmentation | (a) reference | (b) ours | (c) floor | b/a | c/b |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        med = {k: statistics.median(v) for k, v in runs.items()}
        floor = max(med[name] for name in CONTENDERS if name.startswith("floor"))
        for aug in ("plain", "aug"):
            a, b = med[f"reference, {aug}"], med[f"ours, {aug}"]
            label = "crop, flip, rotation" if aug == "aug" else "none"
            lines.append(f"| {name} | {label} | {a:.0f} | {b:.0f} | {floor:.0f} | "
                         f"{b / a:.2f} | {floor / b:.3f} |")
    floors = [f"{n}: floors (images/s): " + ", ".join(
        f"{k.removeprefix('floor, ')} {statistics.median(v):.0f}"
        for k, v in r.items() if k.startswith("floor")) for n, r in results.items()]
    return "\n".join([*lines, "", *floors])


def at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["cnn", "resnet18"],
                        default=["cnn", "resnet18"])
    parser.add_argument("--repeats", type=at_least(1), default=3, help="runs per contender")
    parser.add_argument("--steps", type=at_least(1), help="timed batches per run (default: 60 "
                        "for the CNN, 8 for ResNet-18)")
    parser.add_argument("--warmup", type=at_least(0), help="untimed batches before (5 and 2)")
    parser.add_argument("--threads", type=at_least(1), help="libtorch intra-op threads "
                        "(default: torch's own choice)")
    parser.add_argument("--fashion-dir", default=FASHION)
    parser.add_argument("--cifar-dir", help="a CIFAR-10 folder; random images otherwise")
    parser.add_argument("--json", type=Path, help="also write every run's figure here")
    parser.add_argument("--variants", action="store_true", help="instead, time PyTorch's "
                        "floor under each change that may lift it")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json and not args.json.parent.is_dir():
        parser.error(f"--json: no folder `{args.json.parent}`")
    if args.one:
        job = json.loads(args.one)
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        print(run_one(Workload(**job["work"]), job["what"], job["augment"], job["seed"]))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {device}, "
          f"bias_transfer_rs {bias_transfer_rs.__version__} ({bias_transfer_rs.__git_commit__})")
    with tempfile.TemporaryDirectory() as tmp:
        cifar_dir = Path(args.cifar_dir or tmp)
        if not args.cifar_dir and "resnet18" in args.models:
            batches = 2 * (default(args.steps, 8) + default(args.warmup, 2))
            write_cifar_shaped(cifar_dir, n_train=128 * batches)
        chosen = workloads(args, cifar_dir)
        for work in chosen:
            check(work)
        results = {}
        for work in chosen:
            print(f"{work.name}: {work.warmup} warm-up and {work.steps} timed batches of 128 "
                  "per run", flush=True)
            results[work.name] = (measure_variants if args.variants else measure)(args, work)
    print()
    print((variants_table if args.variants else table)(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
