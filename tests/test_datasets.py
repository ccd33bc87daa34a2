"""The dataset readers on small files in the real formats: CIFAR-10 and CIFAR-100 as their
python (pickled with numpy arrays) and binary archives unpack, MNIST-style idx, and the
download helper; missing and corrupt files give errors naming them."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

import bias_transfer_rs
from bias_transfer_rs import datasets
from conftest import make_tiny_dataset, read_idx, write_cifar, write_tiny_imagenet


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
@pytest.mark.parametrize("binary, protocol", [(False, 2), (False, 4), (False, 5), (True, 0)],
                         ids=["pickle2", "pickle4", "pickle5", "binary"])
def test_cifar_reads_back_exactly(tmp_path: Path, hundred: bool, binary: bool,
                                  protocol: int):
    written = write_cifar(tmp_path, n_train=103, n_test=17, hundred=hundred, binary=binary,
                          protocol=protocol)
    name = "CIFAR100" if hundred else "CIFAR10"
    read = datasets.load(name, tmp_path)
    for (images, labels), (want_images, want_labels) in zip(read, written, strict=True):
        assert images.dtype == np.uint8 and images.shape == want_images.shape
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_cifar_in_a_torchvision_subfolder_is_found(tmp_path: Path):
    (train, _), _ = write_cifar(tmp_path / "CIFAR10", n_train=20, n_test=5)
    (images, _), _ = datasets.load("CIFAR10", tmp_path)
    np.testing.assert_array_equal(images, train)


def test_idx_reads_back_exactly(tmp_path: Path):
    make_tiny_dataset(tmp_path, n_train=30, n_test=10)
    (images, labels), (test_images, _) = datasets.load("FashionMNIST", tmp_path)
    assert images.shape == (30, 1, 28, 28) and test_images.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(images[:, 0],
                                  read_idx(tmp_path / "train-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(labels, read_idx(tmp_path / "train-labels-idx1-ubyte.gz"))


def test_missing_cifar_names_every_folder_and_the_download(tmp_path: Path):
    with pytest.raises(bias_transfer_rs.DataError) as err:
        datasets.load("CIFAR10", tmp_path)
    message = str(err.value)
    assert f"`{tmp_path}/cifar-10-batches-py`" in message
    assert f"`{tmp_path}/CIFAR10/cifar-10-batches-bin`" in message
    assert "python -m bias_transfer_rs.datasets CIFAR10 DIR" in message


def test_partial_cifar_says_what_is_missing(tmp_path: Path):
    write_cifar(tmp_path, n_train=20, n_test=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(bias_transfer_rs.DataError, match=r"lacks `data_batch_3`"):
        datasets.load("CIFAR10", tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "truncated"),
    (lambda raw: b"\x80\x02cos\nsystem\nq\x00.", "refusing the global `os.system`"),
    (lambda raw: pickle.dumps({b"labels": [1, 2]}, protocol=2), "no `data` array"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]},
                              protocol=2), "1 labels for 2 images"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 3072), np.float32),
                               b"labels": [1, 2]}, protocol=2), "expected C-ordered uint8"),
])
def test_corrupt_cifar_batch_names_the_file(tmp_path: Path, damage, message: str):
    write_cifar(tmp_path, n_train=20, n_test=5)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(bias_transfer_rs.DataError) as err:
        datasets.load("CIFAR10", tmp_path)
    assert f"`{path}`: corrupt" in str(err.value) and message in str(err.value)


def test_cifar_label_out_of_range_is_corrupt(tmp_path: Path):
    write_cifar(tmp_path, n_train=20, n_test=5, binary=True)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 12
    path.write_bytes(bytes(raw))
    with pytest.raises(bias_transfer_rs.DataError,
                       match="label 12 is not a class: there are 10, labelled 0 to 9"):
        datasets.load("CIFAR10", tmp_path)


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
def test_a_bad_label_names_its_own_training_file(tmp_path: Path, binary: bool):
    write_cifar(tmp_path, n_train=20, n_test=5, binary=binary)
    if binary:
        path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
        raw = bytearray(path.read_bytes())
        raw[0] = 10
        path.write_bytes(bytes(raw))
    else:
        path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
        batch = pickle.loads(path.read_bytes(), encoding="bytes")
        batch[b"labels"][0] = -1
        path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(bias_transfer_rs.DataError) as err:
        datasets.load("CIFAR10", tmp_path)
    assert str(err.value).startswith(f"`{path}`: corrupt: label {10 if binary else -1} is not")


def make_archive(tmp_path: Path, members: dict[str, bytes]) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return mirror


def test_download_unpacks_an_archive_into_the_layout_read(tmp_path: Path):
    source = tmp_path / "source"
    (train, _), _ = write_cifar(source, n_train=20, n_test=5)
    folder = source / "cifar-10-batches-py"
    mirror = make_archive(tmp_path, {f"cifar-10-batches-py/{p.name}": p.read_bytes()
                                     for p in folder.iterdir()})
    root = tmp_path / "data"
    datasets.download("CIFAR10", root, base_url=mirror.as_uri(), verify=False)
    (images, _), _ = datasets.load("CIFAR10", root)
    np.testing.assert_array_equal(images, train)
    # Published checksums are checked by default; a mismatch leaves nothing behind.
    with pytest.raises(datasets.DownloadError, match="is not the published"):
        datasets.download("CIFAR10", tmp_path / "other", base_url=mirror.as_uri())
    assert list((tmp_path / "other").iterdir()) == []


def test_download_refuses_members_outside_the_dataset_folder(tmp_path: Path):
    mirror = make_archive(tmp_path, {"../evil": b"x"})
    with pytest.raises(datasets.DownloadError, match="unexpected member `../evil`"):
        datasets.download("CIFAR10", tmp_path / "data", base_url=mirror.as_uri(),
                          verify=False)
    assert not (tmp_path / "evil").exists()
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("sorted_val", [False, True], ids=["annotations", "class-folders"])
def test_tiny_imagenet_reads_jpegs_with_their_classes(tmp_path: Path, sorted_val: bool):
    from PIL import Image

    files = write_tiny_imagenet(tmp_path, sorted_val=sorted_val)
    read = datasets.load("TinyImageNet", tmp_path)
    for (images, labels), split in zip(read, ("train", "test"), strict=True):
        expected = files[split]
        assert images.shape == (len(expected), 3, 64, 64)
        np.testing.assert_array_equal(labels, [label for _, label in expected])
        for image, (path, _) in zip(images, expected, strict=True):
            reference = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
            # JPEG decoders differ in their inverse DCT and chroma upsampling: a few levels
            # at most on these noisy images, well under one on average.
            diff = np.abs(image.astype(int) - reference.astype(int))
            assert diff.max() <= 6 and diff.mean() < 0.5
    (train, _), _ = read
    gray = train[1]  # the grayscale JPEG: its one channel, repeated
    np.testing.assert_array_equal(gray[0], gray[1])
    np.testing.assert_array_equal(gray[0], gray[2])


def test_tiny_imagenet_bad_files_are_named(tmp_path: Path):
    files = write_tiny_imagenet(tmp_path)
    broken = files["train"][2][0]
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(bias_transfer_rs.DataError, match=re.escape(f"`{broken}`: corrupt: not a "
                                                                    "readable JPEG")):
        datasets.load("TinyImageNet", tmp_path)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    broken.unlink()
    annotations.write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(bias_transfer_rs.DataError,
                       match="line 1: class `n00000000` has no training folder"):
        datasets.load("TinyImageNet", tmp_path)


@pytest.mark.parametrize("line, message", [
    ("../../train/x.JPEG\tn0\t0\t0\t1\t1", "line 1: `../../train/x.JPEG` is not a file name"),
    ("val_0.JPEG\t{wnid}\t0\t0\t1\t1\nval_0.JPEG\t{wnid}\t0\t0\t1\t1",
     "line 2: `val_0.JPEG` is listed twice"),
    ("val_99.JPEG\t{wnid}\t0\t0\t1\t1", "line 1: `{val}/images/val_99.JPEG` does not exist"),
    ("", "lists no images"),
])
def test_tiny_imagenet_annotation_problems_name_the_line(tmp_path: Path, line: str,
                                                         message: str):
    write_tiny_imagenet(tmp_path)
    val = tmp_path / "tiny-imagenet-200" / "val"
    wnid = sorted(p.name for p in (val.parent / "train").iterdir())[0]
    (val / "val_annotations.txt").write_text(line.format(wnid=wnid) + "\n")
    with pytest.raises(bias_transfer_rs.DataError, match=re.escape(message.format(val=val))):
        datasets.load("TinyImageNet", tmp_path)


def test_tiny_imagenet_without_annotations_says_so(tmp_path: Path):
    write_tiny_imagenet(tmp_path)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.unlink()
    with pytest.raises(bias_transfer_rs.DataError, match=re.escape(
            f"`{annotations}`: corrupt: missing: it labels the images in `val/images/`")):
        datasets.load("TinyImageNet", tmp_path)


def test_a_short_corrupted_set_fails_before_anything_trains(tmp_path: Path):
    _, (test_images, test_labels) = write_cifar(tmp_path, n_train=20, n_test=10)
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(test_labels, 5))
    hwc = np.tile(test_images.transpose(0, 2, 3, 1), (5, 1, 1, 1))
    np.save(folder / "fog.npy", hwc)
    raw = (folder / "fog.npy").read_bytes()
    (folder / "fog.npy").write_bytes(raw[: len(raw) - 100])
    np.save(folder / "snow.npy", np.asfortranarray(hwc))
    config = {"dataset_cls": "CIFAR10", "input_size": 32, "data_dir": str(tmp_path),
              "add_corrupted_test": True}
    with pytest.raises(bias_transfer_rs.DataError, match="fog.npy`: corrupt: shape "
                       r"\[50, 32, 32, 3\] needs 153600 bytes, found 153500"):
        bias_transfer_rs._core.load_dataset(config, tmp_path)
    (folder / "fog.npy").unlink()
    with pytest.raises(bias_transfer_rs.DataError, match="snow.npy`: corrupt: dtype `|u1` in "
                       "Fortran order"):
        bias_transfer_rs._core.load_dataset(config, tmp_path)
