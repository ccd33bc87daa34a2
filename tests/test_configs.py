"""Config classes: defaults, comments, unknown options, hashes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping

import pytest

import bias_transfer_rs
from bias_transfer.configs import dataset, model, trainer
from bias_transfer.configs.base import Description, UnknownOptionWarning
from bias_transfer.configs.experiment import Experiment
from bias_transfer.configs.transfer_experiment import TransferExperiment


class TestDefaults:
    def test_dataset_defaults(self):
        d = dataset.DatasetConfig()
        assert (d.dataset_cls, d.batch_size, d.valid_size, d.input_size) == ("CIFAR100", 128,
                                                                             0.1, 32)
        assert d.apply_data_augmentation is True and d.apply_data_normalization is True
        assert d.data_dir == "./data/image_classification/torchvision/"
        assert (d.shuffle, d.num_workers, d.pin_memory) == (True, 1, True)

    def test_trainer_defaults(self):
        t = trainer.TrainerConfig()
        assert (t.optimizer, t.lr, t.weight_decay, t.momentum) == ("Adam", 3e-4, 5e-4, 0.9)
        assert (t.num_epochs, t.lr_milestones, t.lr_decay) == (200, (60, 120, 160), 0.8)
        assert t.noise_std is None and t.freeze is None and t.reset_linear is False
        assert t.noise_test["noise_std"] == [{0.0: 1.0}, {0.05: 1.0}, {0.1: 1.0}, {0.2: 1.0},
                                             {0.3: 1.0}, {0.5: 1.0}, {1.0: 1.0}]
        assert [list(d)[0] for d in t.noise_test["noise_snr"]] == [5, 4, 3, 2, 1, 0.5, 0]

    @pytest.mark.parametrize("dataset_cls,classes,size,stride", [
        ("CIFAR10", 10, 32, 1), ("CIFAR100", 100, 32, 1), ("TinyImageNet", 200, 64, 2),
        ("FashionMNIST", 10, 28, 1),
    ])
    def test_model_follows_dataset(self, dataset_cls, classes, size, stride):
        m = model.ModelConfig(dataset_cls=dataset_cls)
        assert (m.num_classes, m.input_size, m.core_stride) == (classes, size, stride)
        assert (m.cnn_builder, m.type, m.readout_type) == ("resnet", "50", "dense")

    def test_missing_attribute_reads_none(self):
        assert trainer.TrainerConfig().no_such_option is None


class TestComments:
    def test_description_and_comment_are_the_same_option(self):
        a = trainer.TrainerConfig(description="Noise")
        b = trainer.TrainerConfig(comment="Noise")
        assert a.comment == b.comment == "Noise"
        assert bias_transfer_rs.config_hash(a.to_dict()) == bias_transfer_rs.config_hash(
            b.to_dict())
        assert dataset.DatasetConfig().comment == ""

    def test_conflicting_comments_are_refused(self):
        with pytest.raises(ValueError, match="`comment` and `description` differ"):
            trainer.TrainerConfig(comment="a", description="b")

    def test_comment_enters_the_hash(self):
        assert bias_transfer_rs.config_hash(trainer.TrainerConfig(comment="a").to_dict()) != \
            bias_transfer_rs.config_hash(trainer.TrainerConfig(comment="b").to_dict())


def test_unknown_option_is_kept_with_a_suggestion():
    with pytest.warns(UnknownOptionWarning, match="unknown option `num_epoch`.*`num_epochs`"):
        t = trainer.TrainerConfig(num_epoch=3)
    assert t.num_epoch == 3 and t.to_dict()["num_epoch"] == 3


def test_experiments_and_chains():
    exp = Experiment(dataset.DatasetConfig(), model.ModelConfig(),
                     trainer.TrainerConfig(comment="A"), seed=1)
    chain = TransferExperiment([exp, Experiment(exp.dataset, exp.model,
                                                trainer.TrainerConfig(comment="B"), 1)])
    assert chain.comment == "A -> B"
    assert Description(name="x", seed=1) == ("x", 1)
    with pytest.raises(TypeError, match="item 0"):
        TransferExperiment(["not an experiment"])


class TestHashes:
    def test_golden(self):
        config = {"valid_size": 0.1, "dataset_cls": "FashionMNIST", "batch_size": 128}
        assert bias_transfer_rs.canonical(config) == \
            '{"batch_size":128,"dataset_cls":"FashionMNIST","valid_size":0.1}'
        assert bias_transfer_rs.config_hash(config) == "8b670613a2e7b98254908464a60e697e"

    def test_types_differ_and_sequences_agree(self):
        h = bias_transfer_rs.config_hash
        assert len({h(1), h(1.0), h("1"), h(True)}) == 4
        assert h((1, 2)) == h([1, 2])
        assert h({"a": 1, "b": 2}) == h({"b": 2, "a": 1})

    def test_hashes_do_not_depend_on_the_interpreters_hash_seed(self):
        """Python randomises `hash()` of strings per process; our hashes never use it."""
        code = ("import bias_transfer_rs as b; c = {'noise_std': {0.08: 0.1, -1: 0.5}, "
                "'names': ('a', 'b'), 'x': {'z': 1, 'y': 2}}; "
                "print(b.config_hash(c), b.make_hash(c))")
        seen = {subprocess.run([sys.executable, "-c", code], check=True, text=True,
                               capture_output=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}).stdout
                for seed in ("0", "1", "4242", "random")}
        assert len(seen) == 1

    def test_noise_dict_keys_keep_their_types(self):
        spec = {0.08: 0.1, -1: 0.5, (0.1, 0.2): 0.4}
        assert bias_transfer_rs.canonical(spec) == \
            '{"$dict":[[-1,0.5],[0.08,0.1],[[0.1,0.2],0.4]]}'

    def test_unsupported_values_are_refused(self):
        with pytest.raises(bias_transfer_rs.ConfigError, match="type `set`"):
            bias_transfer_rs.config_hash({"a": {1, 2}})
        assert issubclass(bias_transfer_rs.ConfigError, bias_transfer_rs.BiasTransferError)


def nnfabrik_make_hash(obj) -> str:
    """nnfabrik's `make_hash` as REFERENCE.md section 6 describes it."""
    hashed = hashlib.md5()
    if isinstance(obj, str):
        hashed.update(obj.encode())
    elif isinstance(obj, Mapping):
        for k, v in sorted(obj.items(), key=lambda item: str(item[0])):
            hashed.update(str(k).encode())
            hashed.update(nnfabrik_make_hash(v).encode())
    elif isinstance(obj, Iterable):
        for v in obj:
            hashed.update(nnfabrik_make_hash(v).encode())
    else:
        hashed.update(str(obj).encode())
    return hashed.hexdigest()


def as_lists(obj):
    if isinstance(obj, dict):
        return {k: as_lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_lists(v) for v in obj]
    return obj


class TestLegacyHashAndRoundTrip:
    CONFIGS = [
        trainer.TrainerConfig(comment="Noise", noise_std={0.08: 0.1, (0.1, 0.2): 0.4, -1: 0.5},
                              lr=1e-7, weight_decay=1e16).to_dict(),
        dataset.DatasetConfig(description="it's \"quoted\"").to_dict(),
        model.ModelConfig(dataset_cls="TinyImageNet").to_dict(),
        {"a": None, "b": [True, False, 0.0003, -2.5], "c": {"x": ("y", 1)}},
    ]

    def test_golden_make_hash(self):
        assert bias_transfer_rs.make_hash({0.08: 0.5, -1: 0.5}) == \
            "dc448f9774f07ef31dbf3525a6e6c234"

    @pytest.mark.parametrize("config", CONFIGS)
    def test_make_hash_is_nnfabrik_compatible(self, config):
        assert bias_transfer_rs.make_hash(config) == nnfabrik_make_hash(config)

    @pytest.mark.parametrize("config", CONFIGS)
    def test_canonical_encoding_round_trips(self, config):
        back = bias_transfer_rs.decode(bias_transfer_rs.canonical(config))
        assert back == as_lists(config)
        assert bias_transfer_rs.config_hash(back) == bias_transfer_rs.config_hash(config)

    def test_typed_keys_survive(self):
        back = bias_transfer_rs.decode(bias_transfer_rs.canonical({0.5: 1, 2: 3, (1, 2.0): 4}))
        assert back == {0.5: 1, 2: 3, (1, 2.0): 4}
        assert set(map(type, back)) == {int, float, tuple}
