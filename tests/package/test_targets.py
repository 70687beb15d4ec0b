"""A user's own data set and network by `_target_` (dmlight.targets), in process: what the call gets and
returns, and the errors for what it cannot use. (tests/package/test_wheel.py trains one from an installed wheel.)"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

from dmlight.config import compose_config, model_name
from dmlight.data.datasets import load_data_cfg
from dmlight.errors import ConfigError
from dmlight.models.networks import model_from_config
from dmlight.perturb import quote_run_dir
from dmlight.targets import check_targets

CALLS = []


def _arrays(n_train=13, n_test=5, dim=6, dtype=np.float32, seed=11):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_train + n_test, dim)) * 200).astype(dtype)
    y = rng.integers(0, 4, n_train + n_test)
    y[0] = 3  # four classes, whatever the draw
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class _DataModule(pl.LightningDataModule):
    """A LightningDataModule, batches of 4 (the last one short)."""

    def prepare_data(self):
        CALLS.append("prepare")

    def setup(self, stage):
        CALLS.append(stage)

    def _loader(self, x, y):
        ds = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
        return torch.utils.data.DataLoader(ds, batch_size=4)

    def train_dataloader(self):
        return self._loader(*_arrays()[:2])

    def test_dataloader(self):
        return self._loader(*_arrays()[2:])


def _net(in_features, n_classes, width=3):
    CALLS.append((in_features, n_classes, width))
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, n_classes))


@pytest.fixture(autouse=True)
def user_module(monkeypatch):
    mod = types.ModuleType("dmlight_test_userparts")
    mod.arrays, mod.uint8_arrays = _arrays, lambda: _arrays(dtype=np.uint8)
    mod.DataModule, mod.net, mod.not_a_net = _DataModule, _net, lambda in_features, n_classes, **kw: "a string"
    mod.three = lambda: (1, 2, 3)
    monkeypatch.setitem(sys.modules, "dmlight_test_userparts", mod)
    CALLS.clear()


def _data(target, **keys):
    return OmegaConf.create({"name": "mine", "preprocess": "raw", "data_dir": "data", "batch_size": None,
                             "_target_": f"dmlight_test_userparts.{target}", **keys})


def test_arrays_are_used_as_they_come():
    splits = load_data_cfg(_data("arrays", n_train=9))  # a key of the user's, passed on
    x_train, y_train, x_test, y_test = _arrays(n_train=9)
    assert torch.equal(splits.x_train, torch.from_numpy(x_train)) and torch.equal(splits.x_test, torch.from_numpy(x_test))
    assert splits.y_train.dtype == torch.int64 and splits.y_train.tolist() == y_train.tolist()
    assert splits.sizes() == (6, 4)


def test_uint8_images_are_standardized_with_the_papers_constants():
    x_raw = _arrays(dtype=np.uint8)[0]
    splits = load_data_cfg(_data("uint8_arrays", preprocess="standardize"))
    pixel = float(x_raw[2, 4])
    assert splits.x_train[2, 4].item() == pytest.approx((pixel / 255 - 0.1307) / 0.3081, abs=1e-6)


def test_float_inputs_refuse_standardize():
    with pytest.raises(ConfigError, match="data.preprocess=standardize.*set data.preprocess=raw"):
        load_data_cfg(_data("arrays", preprocess="standardize"))


def test_a_datamodule_is_read_whole_in_order():
    splits = load_data_cfg(_data("DataModule"))
    assert CALLS == ["prepare", "fit", "test"]  # prepared once, set up for each loader it is read from
    x_train, y_train, x_test, y_test = _arrays()
    assert splits.x_train.shape == (13, 6) and torch.equal(splits.x_train, torch.from_numpy(x_train))
    assert splits.y_test.tolist() == y_test.tolist()


def test_a_bad_return_names_what_is_accepted():
    with pytest.raises(ConfigError, match=r"dmlight_test_userparts.three returned tuple; accepted: \(x_train"):
        load_data_cfg(_data("three"))


def test_a_users_network_gets_the_datas_sizes_and_its_own_keys():
    cfg = compose_config(["arch.name=tiny", "+arch._target_=dmlight_test_userparts.net", "+arch.width=5",
                          "arch.site=post_activation"])
    net = model_from_config(cfg, 6, 4)
    assert CALLS == [(6, 4, 5)] and net.name == "tiny" and net.site == "post_activation"
    assert model_name(cfg) == "tiny"
    cfg.arch._target_ = "dmlight_test_userparts.not_a_net"
    with pytest.raises(ConfigError, match="returned str, not a torch.nn.Module"):
        model_from_config(cfg, 6, 4)


@pytest.mark.parametrize("overrides, match", [
    (["+arch._target_=no_such_pkg_xyz.nets.make"], "arch._target_=no_such_pkg_xyz.nets.make: no module named "
                                                   "'no_such_pkg_xyz'.*PYTHONPATH"),
    (["+data._target_=make_data"], "data._target_=make_data is not an import path"),
    (["+arch._target_=dmlight_test_userparts.net", "seeds=[3,5]"], r"seeds=\[3, 5\].*-m seed=0,1,2"),
])
def test_targets_are_checked_before_training(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_targets(compose_config(overrides))


def test_a_users_network_name_is_a_folder_name():
    with pytest.raises(ConfigError, match="arch.name='a/b'"):
        model_name(compose_config(["arch.name=a/b", "+arch._target_=dmlight_test_userparts.net"]))


def test_variant_run_dirs_are_quoted_whole_for_hydra():
    assert quote_run_dir(["run_dir=o/ReLU/optimizer.lr=0.1,trainer.max_epochs=4/seed0", "run_dir=a,b",
                          "run_dir='x=1'", "seed=3"]) == \
        ["run_dir='o/ReLU/optimizer.lr=0.1,trainer.max_epochs=4/seed0'", "run_dir=a,b", "run_dir='x=1'", "seed=3"]
