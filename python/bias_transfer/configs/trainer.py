"""Trainer configs (fn `bias_transfer.trainer.trainer`)."""

from __future__ import annotations

from typing import Any, ClassVar

from bias_transfer.configs.base import BaseConfig

DEFAULT_NOISE_TEST = {
    "noise_snr": [{level: 1.0} for level in (5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.0)],
    "noise_std": [{level: 1.0} for level in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)],
}


class TrainerConfig(BaseConfig):
    """How to train: optimiser, schedule, noise augmentation, transfer options."""

    fn: ClassVar[str] = "bias_transfer.trainer.trainer"
    defaults: ClassVar[dict[str, Any]] = {
        "force_cpu": False,
        "optimizer": "Adam",
        "amsgrad": False,
        "lr": 3e-4,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "num_epochs": 200,
        "lr_milestones": (60, 120, 160),
        "lr_decay": 0.8,
        "adaptive_lr": False,
        "patience": 10,
        "threshold": 1e-4,
        "verbose": True,
        "add_noise": False,
        "noise_std": None,
        "noise_snr": None,
        "noise_test": DEFAULT_NOISE_TEST,
        "noise_adv_loss_factor": 1.0,
        "noise_adv_gamma": 10.0,
        "representation_matching": None,
        "freeze": None,
        "reset_linear": False,
        "reset_linear_frequency": None,
        "transfer_from_path": None,
    }
