"""Dataset configs (fn `bias_transfer.dataset.dataset_loader`)."""

from __future__ import annotations

from typing import Any, ClassVar

from bias_transfer.configs.base import BaseConfig


class DatasetConfig(BaseConfig):
    """Which data to load, how to split, batch and normalise it."""

    fn: ClassVar[str] = "bias_transfer.dataset.dataset_loader"
    defaults: ClassVar[dict[str, Any]] = {
        "dataset_cls": "CIFAR100",
        "batch_size": 128,
        "apply_data_augmentation": True,
        "apply_data_normalization": True,
        "input_size": 32,
        "data_dir": "./data/image_classification/torchvision/",
        "valid_size": 0.1,
        "shuffle": True,
        "num_workers": 1,
        "pin_memory": True,
    }
    optional: ClassVar[tuple[str, ...]] = ("add_corrupted_test",)


class ImageDatasetConfig(DatasetConfig):
    """The name later recipes use for `DatasetConfig`."""
