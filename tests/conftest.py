"""Shared helpers: running `main.py` in a fresh process, writing small idx datasets."""

from __future__ import annotations

import gzip
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def run_main(args: list[str], work_dir: Path, recipes_dir: Path = RECIPES,
             dev_mode: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run `main.py` with its own work and cache directories; returns the finished process.
    `dev_mode` runs the installed code (the pins are recorded, not checked out)."""
    full_env = {**os.environ, "BT_WORK_DIR": str(work_dir), "BT_LOG": "info",
                "BT_CACHE_DIR": str(work_dir.parent / "cache"), **env}
    return subprocess.run(
        [sys.executable, str(RECIPES / "main.py"), "--recipes-dir", str(recipes_dir),
         "--quiet", *(["--dev-mode"] if dev_mode else []), *args],
        capture_output=True, text=True, env=full_env, timeout=3600,
    )


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write an unsigned-byte idx file (the MNIST format), optionally gzip-compressed."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_tiny_dataset(folder: Path, n_train: int = 600, n_test: int = 200,
                      compress: bool = True, seed: int = 0) -> Path:
    """A learnable 10-class dataset in the real idx layout: class k lights row block k."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4: 2 * k + 6, 4:24] = 230
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


def cifar_images(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 CIFAR-shaped images `[n, 3, 32, 32]`: class k brightens one channel
    in one of four bands."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 80, (n, 3, 32, 32)).astype(np.uint8)
    for i, k in enumerate(labels):
        band = (k // 3) % 4 * 8
        images[i, k % 3, band: band + 8, :] = 220
    return images, labels


def write_cifar(root: Path, n_train: int = 100, n_test: int = 40, hundred: bool = False,
                binary: bool = False, protocol: int = 2, seed: int = 0
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 (or -100) in the layout its official python or binary archive unpacks to;
    python batches are pickled dicts of numpy arrays, with the byte-string keys of the
    official Python 2 files under protocol 2. Returns the train and test arrays."""
    classes = 100 if hundred else 10
    train = cifar_images(n_train, classes, seed)
    test = cifar_images(n_test, classes, seed + 1)
    if hundred:
        folder, parts = ("cifar-100-binary" if binary else "cifar-100-python"), ["train"]
        test_name = "test"
    else:
        folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
        parts, test_name = [f"data_batch_{i}" for i in range(1, 6)], "test_batch"
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(n_train), len(parts))
    files = [(name, train[0][idx], train[1][idx]) for name, idx in zip(parts, chunks,
                                                                      strict=True)]
    for name, images, labels in [*files, (test_name, *test)]:
        if binary:
            lead = [labels // 5, labels] if hundred else [labels]
            records = np.concatenate([np.stack(lead, 1).astype(np.uint8),
                                      images.reshape(len(labels), -1)], axis=1)
            (out / f"{name}.bin").write_bytes(records.tobytes())
            continue
        key = (lambda k: k.encode()) if protocol == 2 else (lambda k: k)
        label_key = "fine_labels" if hundred else "labels"
        batch = {key("batch_label"): key(f"batch {name}"), key(label_key): labels.tolist(),
                 key("data"): images.reshape(len(labels), 3072),
                 key("filenames"): [key(f"img_{i}.png") for i in range(len(labels))]}
        if hundred:
            batch[key("coarse_labels")] = (labels // 5).tolist()
        (out / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return train, test


def write_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 4, n_val: int = 6,
                        sorted_val: bool = False, seed: int = 0) -> dict[str, list]:
    """TinyImageNet as `tiny-imagenet-200.zip` unpacks: JPEGs under `train/<wnid>/images/`
    and `val/images/` with `val_annotations.txt` (or, with `sorted_val`, `val/<wnid>/`);
    one training image is grayscale. Returns `{split: [(path, label)]}` in reading order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = sorted(f"n{rng.integers(10**7, 10**8)}" for _ in range(classes))
    (base / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    out: dict[str, list] = {"train": [], "test": []}

    def image(path: Path, label: int, gray: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        pixels[label * 16: label * 16 + 16] = 255
        picture = Image.fromarray(pixels)
        (picture.convert("L") if gray else picture).save(path, format="JPEG", quality=95)

    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            path = base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            image(path, label, gray=(label, i) == (0, 1))
            out["train"].append((path, label))
    lines, val = [], []
    for i in range(n_val):
        label = int(rng.integers(0, classes))
        name = f"val_{i}.JPEG"
        path = base / "val" / (wnids[label] if sorted_val else "images") / name
        image(path, label)
        val.append((path, label))
        lines.append(f"{name}\t{wnids[label]}\t0\t0\t63\t63")
    if sorted_val:
        val.sort(key=lambda item: (item[1], item[0].name))
    else:
        (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    out["test"] = val
    return out


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file written by `write_idx` or shipped by the dataset package."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4: 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


def table_counts(db: Path) -> dict[str, int]:
    """Row counts of the tables of a schema's SQLite file."""
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


TINY = "_2026_01_01_tiny"


def write_recipe(recipes: Path, data_dir: Path, replace: dict[str, str] | None = None) -> None:
    """A two-stage recipe on `data_dir`; `replace` maps text of the module to new text."""
    folder = recipes / TINY
    folder.mkdir(parents=True)
    (folder / "__commits.json").write_text('{"default": {"bias_transfer_rs": "abc"}}')
    (folder / "__init__.py").write_text("")
    module = textwrap.dedent(f"""
        from bias_transfer.configs import dataset, model, trainer
        from bias_transfer.configs.base import Description
        from bias_transfer.configs.experiment import Experiment
        from bias_transfer.configs.transfer_experiment import TransferExperiment

        data = dataset.DatasetConfig(dataset_cls="FashionMNIST", data_dir="{data_dir}",
                                     input_size=28, batch_size=32, apply_data_augmentation=False,
                                     apply_data_normalization=False)
        net = model.ModelConfig(dataset_cls="FashionMNIST", cnn_builder="cnn")
        noise_test = {{"noise_std": [{{0.0: 1.0}}, {{0.5: 1.0}}]}}
        first = Experiment(data, net, trainer.TrainerConfig(
            comment="Noisy", num_epochs=2, lr=1e-3, noise_std={{0.2: 0.5, -1: 0.5}},
            noise_test=noise_test), seed=7)
        second = Experiment(data, net, trainer.TrainerConfig(
            comment="Transfer", num_epochs=1, lr=1e-3, freeze=("core",), reset_linear=True,
            noise_test=noise_test), seed=7)
        experiments = {{}}
        transfer_experiments = {{
            Description("Noisy -> Transfer", 7): TransferExperiment([first, second]),
            Description("Noisy", 7): first,
        }}
        """)
    for old, new in (replace or {}).items():
        assert old in module, old
        module = module.replace(old, new)
    (folder / "tiny.py").write_text(module)


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "work"
