"""The papers' settings, as literal numbers from PAPERS.md, against what the configs and code
actually run. No training here. Every expected value is written in this file (PAPERS.md's
numbers, numpy grids, torch's own functions), never read back from dmlight."""

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dmlight.config import compose_config
from dmlight.data.datasets import load_data, preprocess_images
from dmlight.models.networks import ACTIVATIONS, build_model
from dmlight.perturbation.formulas import sweep_points
from tests.conftest import REPO

# ---------------------------------------------------------------- activations

# What each activation name must compute, written with torch's own functions.
REFERENCE_ACTIVATIONS = {
    "relu": torch.relu,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact (erf) GELU, torch's default
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.01),  # PyTorch's default slope
}

# Negative, zero and positive values, large and small, so every pair of the functions above
# (and the plausible mix-ups: GELU's tanh approximation, another leaky slope) differ on it.
PROBE = torch.tensor([-300.0, -7.5, -2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.25, 0.5, 1.0, 2.0, 7.5, 300.0])


def test_the_probe_tells_every_reference_activation_and_the_likely_mix_ups_apart():
    outs = {name: fn(PROBE) for name, fn in REFERENCE_ACTIVATIONS.items()}
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.equal(outs[a], outs[b]), (a, b)
    assert not torch.equal(outs["gelu"], F.gelu(PROBE, approximate="tanh"))
    assert not torch.equal(outs["leaky_relu"], F.leaky_relu(PROBE, 0.1))
    assert not torch.equal(outs["leaky_relu"], F.leaky_relu(PROBE, 0.2))


def _config_activation_names() -> dict[str, str]:
    """conf/activation/<file>.yaml -> the `name` it sets."""
    return {p.stem: OmegaConf.load(p).name for p in sorted((REPO / "conf" / "activation").glob("*.yaml"))}


def test_config_activations_are_exactly_the_ones_the_code_accepts_and_this_file_checks():
    files = _config_activation_names()
    assert all(stem == name for stem, name in files.items()), files  # activation=<file> selects <name>
    assert set(files) == set(ACTIVATIONS) == set(REFERENCE_ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(REFERENCE_ACTIVATIONS))
def test_each_activation_name_computes_torchs_function(name):
    reference = REFERENCE_ACTIVATIONS[name](PROBE)
    # The way a run builds it: the config group, then build_model with the config's name.
    cfg = compose_config([f"activation={name}"])
    assert cfg.activation.name == name
    for arch in ("mlp", "mlp2", "mlp2_neg", "offset_l2"):
        net = build_model(arch, cfg.activation.name, False, hidden=len(PROBE), in_features=3)
        with torch.no_grad():
            assert torch.equal(net.activation(PROBE[None, :])[0], reference), (arch, name)
            if arch.startswith("mlp2"):  # the output activation is the same function
                assert torch.equal(net.output_activation(PROBE[None, :])[0], reference), (arch, name)
    # Inside the network, where the hidden layer feeds it: set the Linear to pass PROBE through.
    net = build_model("mlp", name, True, hidden=len(PROBE), in_features=len(PROBE), n_classes=len(PROBE))
    with torch.no_grad():
        net.hidden.weight.copy_(torch.eye(len(PROBE)))
        net.hidden.bias.zero_()
        net.head.weight.copy_(torch.eye(len(PROBE)))
        net.head.bias.zero_()
        assert torch.allclose(net(PROBE[None, :])[0], reference, rtol=1e-6, atol=1e-6), name


# ---------------------------------------------------------------- experiment configs

EXPERIMENTS = {
    # name: (arch, epochs, head bias, perturbation site)
    "use_distance_metrics": ("mlp", 5_000, True, "pre_activation"),
    "learn_distance_metrics": ("mlp", 5_000, False, "post_activation"),
    "learn_bias": ("mlp", 5_000, True, "post_activation"),
    "offset_l2": ("offset_l2", 50_000, False, "post_activation"),
}


def test_every_experiment_config_is_listed_here():
    """Every experiment is a paper's, listed here, or the study's (beyond the papers: tests/report/test_study.py)."""
    papers = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml") if not p.stem.startswith("study")}
    assert papers == set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_configs_carry_the_papers_training_settings(experiment):
    arch, epochs, head_bias, site = EXPERIMENTS[experiment]
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.experiment_name == experiment
    assert cfg.arch.name == arch
    assert cfg.trainer.max_epochs == epochs
    assert cfg.arch.hidden == 128
    assert cfg.arch.head_bias is head_bias
    assert cfg.arch.site == site
    assert cfg.data.batch_size is None  # full batch: one SGD step per epoch
    assert cfg.data.preprocess == "raw"  # what the authors' code ran
    # Plain SGD, lr 0.001, no momentum, no weight decay: as written and as torch builds it.
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.001, 0.0, 0.0)
    opt = hydra.utils.instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == \
        (0.001, 0, 0, 0, False)
    # The network the config builds: Linear(784, 128) -> ... -> head of 10, bias as the paper says.
    net = build_model(cfg.arch.name, cfg.activation.name, cfg.arch.head_bias, cfg.arch.hidden, site=cfg.arch.site)
    assert (net.hidden.in_features, net.hidden.out_features) == (784, 128)
    assert net.hidden.bias is not None
    if arch == "mlp":
        assert (net.head.in_features, net.head.out_features) == (128, 10)
        assert (net.head.bias is not None) is head_bias
    else:
        assert net.head.mu.shape == net.head.alpha.shape == (10, 128)
    # Where the probe perturbs: the hidden Linear's output (USE) or its activation's (LEARN).
    from dmlight.perturbation.probe import locate

    assert [n for n, _ in net.named_children()][:2] == ["hidden", "activation"]
    where = locate(net, cfg.perturbation.get("layer") or "hidden", cfg.arch.site)
    assert (where.target, where.activation) == ("hidden" if site == "pre_activation" else "activation", "activation")


def test_the_use_experiment_sweeps_scale_clip_and_offset_on_the_training_set():
    pert = compose_config(["experiment=use_distance_metrics"]).perturbation
    assert list(pert.kinds) == ["scale", "clip", "offset"]
    assert list(pert.splits) == ["train"]
    assert pert.unit is None and pert.magnitude is None and pert.magnitudes is None


def _assert_grid(got: list[float], want: np.ndarray) -> None:
    # dmlight rounds its grid points to 12 decimals (so 5% reads 0.05): compare to 1e-12.
    assert len(got) == len(want)
    assert got == sorted(got)
    np.testing.assert_allclose(np.array(got), want, rtol=0, atol=1e-12)


def test_use_grids_are_the_authors():
    points = sweep_points(compose_config(["experiment=use_distance_metrics"]).perturbation, "pre_activation", 128)
    assert list(points) == ["scale", "clip", "offset"]
    log_grid = np.geomspace(0.01, 10.0, 100)  # 100 log-spaced points, 1% .. 1000%
    assert log_grid[0] == 0.01 and log_grid[-1] == 10.0 and np.allclose(np.diff(np.log(log_grid)), np.log(1000) / 99)
    _assert_grid(points["scale"], log_grid)
    _assert_grid(points["clip"], log_grid)
    offset = np.sort(np.concatenate([
        np.linspace(-2.0, -0.4, 32, endpoint=False),  # step 0.05
        np.linspace(-0.4, 0.4, 80, endpoint=False),  # step 0.01
        np.linspace(0.4, 1.0, 13),  # step 0.05, 1.0 included
    ]))
    assert len(offset) == 125 and len(np.unique(offset)) == 125
    _assert_grid(points["offset"], offset)
    # The same grids come with the single-kind configs.
    for kind in ("scale", "clip", "offset"):
        alone = sweep_points(compose_config([f"perturbation={kind}"]).perturbation, "pre_activation", 128)
        assert alone == {kind: points[kind]}


def test_learn_clamp_grid_is_101_points_from_0_to_1():
    pert = compose_config(["experiment=learn_distance_metrics", "perturbation=learn"]).perturbation
    points = sweep_points(pert, "post_activation", 128)
    assert list(points) == ["clamp_min", "clamp_max"]
    for kind in points:
        _assert_grid(points[kind], np.linspace(0.0, 1.0, 101))


# ---------------------------------------------------------------- preprocessing

PIXELS = np.array([0, 1, 17, 33, 34, 100, 128, 200, 254, 255], dtype=np.uint8)


def _images(values: np.ndarray) -> np.ndarray:
    """Two 28x28 uint8 images holding `values` (tiled), the shape the datasets give."""
    flat = np.resize(values, 2 * 784).astype(np.uint8)
    return flat.reshape(2, 28, 28)


def test_standardize_is_mean_0_1307_std_0_3081_on_unit_scaled_pixels():
    images = _images(PIXELS)
    got = preprocess_images(images, "standardize")
    assert got.dtype == torch.float32 and got.shape == (2, 784)
    want = (images.reshape(2, 784).astype(np.float64) / 255.0 - 0.1307) / 0.3081
    # float32 arithmetic: within a few float32 roundings of the exact value (|x| < 3 here).
    np.testing.assert_allclose(got.numpy().astype(np.float64), want, rtol=0, atol=2e-6)
    # The end points, written out: 0 -> -0.1307/0.3081, 255 -> (1-0.1307)/0.3081.
    assert got[0, 0].item() == pytest.approx(-0.424213, abs=1e-6)
    assert got[0, 9].item() == pytest.approx(2.821487, abs=1e-6)
    # A pixel at the mean (0.1307 * 255 = 33.33) lands between 33 and 34 at about 0.
    assert got[0, 3].item() < 0 < got[0, 4].item()


def test_standardize_on_a_dataset_equals_the_formula_on_its_uint8_pixels():
    from dmlight.data.datasets import _arrays

    raw_u8 = _arrays("synthetic", "data", True, 20.0)["train_images"]
    std = load_data("synthetic", "standardize").x_train
    want = (raw_u8.reshape(len(raw_u8), -1).astype(np.float64) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(std.numpy().astype(np.float64), want, rtol=0, atol=2e-6)


def test_raw_is_0_to_255_as_float32_unchanged():
    images = _images(np.arange(256, dtype=np.uint8))
    got = preprocess_images(images, "raw")
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor(images.reshape(2, 784), dtype=torch.float32))
    assert got.min().item() == 0.0 and got.max().item() == 255.0
    data = load_data("synthetic", "raw")
    assert data.x_train.dtype == torch.float32 and data.x_train.max().item() <= 255.0
    assert torch.equal(data.x_train, data.x_train.round())  # whole pixel values, not rescaled
