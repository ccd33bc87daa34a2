"""Config classes for recipe files: datasets, models, trainers and experiments."""

from bias_transfer.configs import base, dataset, experiment, model, trainer, transfer_experiment

__all__ = ["base", "dataset", "experiment", "model", "trainer", "transfer_experiment"]
