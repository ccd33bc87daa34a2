"""`TransferExperiment`: experiments run in order, each from the previous one's weights."""

from __future__ import annotations

from collections.abc import Iterable

from bias_transfer.configs.experiment import Experiment


class TransferExperiment:
    """A chain of experiments; its comment joins theirs with `" -> "`."""

    def __init__(self, experiments: Iterable[Experiment]) -> None:
        self.experiments = list(experiments)
        if not self.experiments:
            raise ValueError("TransferExperiment needs at least one experiment")
        for i, exp in enumerate(self.experiments):
            if not isinstance(exp, Experiment):
                raise TypeError(f"TransferExperiment item {i} is a {type(exp).__name__}, "
                                "not an Experiment")

    @property
    def comment(self) -> str:
        return " -> ".join(e.comment for e in self.experiments)

    def __repr__(self) -> str:
        return f"TransferExperiment({self.experiments!r})"
