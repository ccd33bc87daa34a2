"""Model configs (fn `bias_transfer.models.cnn_builder`)."""

from __future__ import annotations

from typing import Any, ClassVar

from bias_transfer.configs.base import BaseConfig

NUM_CLASSES = {"CIFAR10": 10, "CIFAR100": 100, "TinyImageNet": 200, "MNIST": 10,
               "FashionMNIST": 10, "SVHN": 10, "ImageNet": 1000}
INPUT_SIZE = {"TinyImageNet": 64, "MNIST": 28, "FashionMNIST": 28, "ImageNet": 224}


class ModelConfig(BaseConfig):
    """Which network to build; `num_classes` and `input_size` follow `dataset_cls`."""

    fn: ClassVar[str] = "bias_transfer.models.cnn_builder"
    defaults: ClassVar[dict[str, Any]] = {
        "dataset_cls": "CIFAR100",
        "cnn_builder": "resnet",
        "type": "50",
        "num_classes": 100,
        "input_size": 32,
        "core_stride": 1,
        "conv_stem_kernel_size": 3,
        "pretrained": False,
        "readout_type": "dense",
        "noise_adv_classification": False,
        "noise_adv_regression": False,
    }

    @classmethod
    def derived(cls, options: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        dataset_cls = options["dataset_cls"]
        out: dict[str, Any] = {}
        if "num_classes" not in given:
            out["num_classes"] = NUM_CLASSES.get(dataset_cls, options["num_classes"])
        input_size = given.get("input_size", INPUT_SIZE.get(dataset_cls, 32))
        out["input_size"] = input_size
        if "core_stride" not in given:
            out["core_stride"] = 2 if input_size > 32 else 1
        return out


class ClassificationModelConfig(ModelConfig):
    """The name later recipes use for `ModelConfig`."""
