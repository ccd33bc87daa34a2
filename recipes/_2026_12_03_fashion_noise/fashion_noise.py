"""Does training with Gaussian noise make a small CNN's core more robust, and does that
robustness survive transfer to clean data with a frozen core and a fresh readout?"""

from bias_transfer.configs import dataset, model, trainer
from bias_transfer.configs.base import Description
from bias_transfer.configs.experiment import Experiment
from bias_transfer.configs.transfer_experiment import TransferExperiment

experiments = {}
transfer_experiments = {}

NOISE_TEST = {"noise_std": [{level: 1.0} for level in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)]}


def fashion_data():
    return dataset.DatasetConfig(
        comment="Fashion-MNIST",
        dataset_cls="FashionMNIST",
        data_dir="/usr/share/datasets/fashion-mnist/",
        input_size=28,
        batch_size=128,
        valid_size=0.1,
        apply_data_augmentation=False,
        apply_data_normalization=False,  # noise is clamped to pixel range [0, 1]
    )


def small_cnn():
    return model.ModelConfig(comment="small CNN", dataset_cls="FashionMNIST", cnn_builder="cnn",
                             type="small")


def training(comment, num_epochs, **options):
    return trainer.TrainerConfig(comment=comment, num_epochs=num_epochs, lr=1e-3,
                                 weight_decay=0.0, lr_milestones=(), noise_test=NOISE_TEST,
                                 **options)


for seed in (42,):
    experiments[Description(name="Clean", seed=seed)] = Experiment(
        dataset=fashion_data(), model=small_cnn(), trainer=training("Clean", 3), seed=seed)
    experiments[Description(name="Noise Augmented", seed=seed)] = Experiment(
        dataset=fashion_data(),
        model=small_cnn(),
        trainer=training("Noise Augmented", 3,
                         noise_std={0.08: 0.1, 0.12: 0.1, 0.18: 0.1, 0.26: 0.1, 0.38: 0.1,
                                    -1: 0.5}),
        seed=seed,
    )
    experiments[Description(name="Transfer", seed=seed)] = Experiment(
        dataset=fashion_data(),
        model=small_cnn(),
        trainer=training("Transfer", 1, freeze=("core",), reset_linear=True),
        seed=seed,
    )
    for source in ("Noise Augmented", "Clean"):
        transfer_experiments[Description(name=f"{source} -> Transfer", seed=seed)] = (
            TransferExperiment([experiments[Description(name=source, seed=seed)],
                                experiments[Description(name="Transfer", seed=seed)]]))
