"""`Experiment`: one dataset, model and trainer config with a seed."""

from __future__ import annotations

from dataclasses import dataclass

from bias_transfer.configs.dataset import DatasetConfig
from bias_transfer.configs.model import ModelConfig
from bias_transfer.configs.trainer import TrainerConfig


@dataclass
class Experiment:
    """One trainable unit; its comment is the trainer's."""

    dataset: DatasetConfig
    model: ModelConfig
    trainer: TrainerConfig
    seed: int = 42

    @property
    def comment(self) -> str:
        return self.trainer.comment
