"""The example recipe: every experiment module's dicts merged, to run the whole recipe."""

from . import baseline

experiments = {}
transfer_experiments = {}
for _module in (baseline,):
    experiments.update(_module.experiments)
    transfer_experiments.update(_module.transfer_experiments)
