"""Download the datasets the Rust core reads, into the layouts it looks for.

`python -m bias_transfer_rs.datasets CIFAR10 DIR` fetches and unpacks the python version of
CIFAR-10 into `DIR/cifar-10-batches-py/` (CIFAR-100 into `cifar-100-python/`, TinyImageNet
into `tiny-imagenet-200/`); MNIST and FashionMNIST land as their four idx `.gz` files in
`DIR/`. Point `data_dir` (or `BT_DATA_DIR`) at `DIR` afterwards."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CIFAR = "https://www.cs.toronto.edu/~kriz/"
FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
TINY = "http://cs231n.stanford.edu/"
IDX = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

# Per dataset: (base URL, files, md5 of each file or None, archive folder or None).
SOURCES: dict[str, tuple[str, list[str], list[str | None], str | None]] = {
    "CIFAR10": (CIFAR, ["cifar-10-python.tar.gz"], ["c58f30108f718f92721af3b95e74349a"],
                "cifar-10-batches-py"),
    "CIFAR100": (CIFAR, ["cifar-100-python.tar.gz"], ["eb9058c3a382ffc7106e4002c42a8d85"],
                 "cifar-100-python"),
    "TinyImageNet": (TINY, ["tiny-imagenet-200.zip"], [None], "tiny-imagenet-200"),
    "FashionMNIST": (FASHION, IDX, [None] * 4, None),
    "MNIST": (MNIST, IDX, [None] * 4, None),
}


def load(dataset_cls: str, root: str | os.PathLike[str]
         ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read `dataset_cls` from `root` as a run would: `((train_images, train_labels),
    (test_images, test_labels))`, images as uint8 `[N, C, H, W]`."""
    from bias_transfer_rs import _core

    size = {"MNIST": 28, "FashionMNIST": 28, "TinyImageNet": 64}.get(dataset_cls, 32)
    config = {"dataset_cls": dataset_cls, "input_size": size, "data_dir": str(root)}
    return _core.load_dataset(config, Path.cwd())


class DownloadError(RuntimeError):
    """A file could not be fetched, or arrived corrupt."""


def download(dataset_cls: str, root: str | os.PathLike[str], base_url: str | None = None,
             verify: bool = True) -> Path:
    """Fetch `dataset_cls` into `root` (unpacking archives) and return `root`; files already
    there are kept. `base_url` replaces the official location (a mirror, or `file://`);
    `verify=False` skips the check of the published md5 sums."""
    if dataset_cls not in SOURCES:
        raise ValueError(f"`{dataset_cls}` has no download; available: {', '.join(SOURCES)}")
    url, names, md5s, folder = SOURCES[dataset_cls]
    url = base_url or url
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if folder is not None and (root / folder).is_dir():
        log.info("%s is already unpacked in %s", dataset_cls, root / folder)
        return root
    for name, md5 in zip(names, md5s, strict=True):
        target = root / name
        if folder is None and target.is_file():
            continue
        fetched = _fetch(url.rstrip("/") + "/" + name, md5 if verify else None)
        if folder is None:
            shutil.move(fetched, target)
        else:
            _unpack(fetched, name, root, folder)
            os.unlink(fetched)
    return root


def _fetch(url: str, md5: str | None) -> Path:
    """Download `url` to a temporary file, checking its md5 when known."""
    log.info("downloading %s", url)
    digest = hashlib.md5()
    with tempfile.NamedTemporaryFile(delete=False, suffix=".part") as out:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as e:
            os.unlink(out.name)
            raise DownloadError(f"`{url}`: {e}") from e
    if md5 is not None and digest.hexdigest() != md5:
        os.unlink(out.name)
        raise DownloadError(f"`{url}`: md5 {digest.hexdigest()} is not the published {md5}")
    return Path(out.name)


def _unpack(archive: Path, name: str, root: Path, folder: str) -> None:
    """Unpack `archive` (a `.tar.gz` or `.zip` called `name`), which must hold only
    `folder/...`, into `root` atomically."""
    def check(member: str, plain: bool) -> None:
        parts = Path(member).parts
        if not plain or parts[:1] != (folder,) or ".." in parts:
            raise DownloadError(f"`{name}`: unexpected member `{member}`")

    with tempfile.TemporaryDirectory(dir=root) as staging:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    check(info.filename, not is_link)
                zipped.extractall(staging)
        else:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    check(member.name, member.isfile() or member.isdir())
                tar.extractall(staging, filter="data")
        os.replace(Path(staging) / folder, root / folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bias_transfer_rs.datasets",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("dataset_cls", choices=sorted(SOURCES))
    parser.add_argument("root", help="the folder to download into (`data_dir`)")
    parser.add_argument("--base-url", help="fetch from this location instead")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of the published md5 sums")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BT_LOG", "info").upper(), format="%(message)s")
    try:
        path = download(args.dataset_cls, args.root, args.base_url, not args.no_verify)
    except DownloadError as e:
        parser.exit(1, f"error: {e}\n")
    log.info("%s is in %s; set `data_dir` or BT_DATA_DIR to it", args.dataset_cls, path)


if __name__ == "__main__":
    main()
