"""Perturbation experiments: the USE/LEARN math, the sweep engine against a naive full forward,
the callback's files, and `python -m dmlight.perturb` on saved runs. Trainings are real."""
import csv
import doctest
import math
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from dmlight.config import compose_config
from dmlight.data.datasets import load_data
from dmlight.models.networks import build_model
from dmlight.data.datasets import Splits
from dmlight.perturb import perturb
from dmlight.perturbation import formulas as perturbation
from dmlight.perturbation import engine as sweep_engine
from dmlight.perturbation.formulas import (PerturbationError, UnitRanges, expand_grid, perturbation_values, stack_values,
                                  sweep_points)
from dmlight.perturbation.probe import PerturbationSweep
from dmlight.perturbation.driver import run_sweep
from dmlight.perturbation.engine import network_sweep
from dmlight.runs.files import PERTURBATION_COLUMNS as COLUMNS, RANGE_COLUMNS, read_results
from dmlight.train import train
from tests.conftest import copy_run, perturb_again, run_module, train_cfg

USE = ("scale", "clip", "offset")
LEARN = ("clamp_min", "clamp_max")


@pytest.fixture(scope="module")
def use_run(tmp_path_factory):
    """ReLU_Bias (USE), 300 epochs on mnist5k, with the callback's full USE sweep on train and test."""
    run_dir = tmp_path_factory.mktemp("use_run")
    cfg = train_cfg("experiment=use_distance_metrics", "trainer.max_epochs=300",
                    "perturbation.splits=[train,test]", "run.checkpoint_every=300")
    return run_dir, train(cfg, run_dir)


@pytest.fixture(scope="module")
def learn_run(tmp_path_factory):
    """ReLU (LEARN: no head bias, Perturbation after the activation), 200 epochs, LEARN clamp sweep."""
    run_dir = tmp_path_factory.mktemp("learn_run")
    cfg = train_cfg("experiment=learn_distance_metrics", "perturbation=learn", "trainer.max_epochs=200",
                    "run.checkpoint_every=200")
    return run_dir, train(cfg, run_dir)


@pytest.fixture(scope="module")
def digits():
    return load_data("mnist5k")


def loaded(run_dir):
    from dmlight.runs.load import load_run

    return load_run(run_dir).model


@torch.inference_mode()
def naive_counts(net, x, y, values) -> list[int]:
    """The reference: the whole network with clamp(out * scale + offset, lower, upper) at its site (the
    hidden Linear's output, or the activation's at post_activation) by a hook written here, argmax."""
    counts = []
    at = net.hidden if net.site == "pre_activation" else net.activation
    for i in range(len(values["scale"])):
        s, t, lo, hi = (values[k][i] for k in ("scale", "offset", "lower", "upper"))
        handle = at.register_forward_hook(lambda m, inp, out: torch.clamp(out * s + t, min=lo, max=hi))
        counts.append(int((net(x).argmax(1) == y).sum()))
        handle.remove()
    return counts


def perturbed(ranges, kind, p, h):
    """clamp(h * scale + offset, lower, upper) with one point's values (the reference's formula)."""
    v = perturbation_values(kind, p, ranges)
    return torch.clamp(h * v["scale"] + v["offset"], min=v["lower"], max=v["upper"])


def grid(name: str, **keys) -> dict:
    """A perturbation config as a plain dict, with some keys replaced."""
    return {**OmegaConf.to_container(compose_config([f"perturbation={name}"]).perturbation), **keys}


def rows_of(run_dir, **match):
    return [r for r in read_results(run_dir) if all(r[k] == v for k, v in match.items())]


# ---------------------------------------------------------------- the math

def test_grids_are_the_papers():
    use = sweep_points(compose_config(["perturbation=use"]).perturbation, "pre_activation")
    assert {k: len(v) for k, v in use.items()} == {"scale": 100, "clip": 100, "offset": 125}
    for kind in ("scale", "clip"):
        points = use[kind]
        assert points[0] == 0.01 and points[-1] == 10.0 and 1.0 in points
        ratios = [b / a for a, b in zip(points, points[1:])]
        assert max(ratios) - min(ratios) < 1e-9  # log-spaced
    offset = use["offset"]
    assert offset == sorted(offset) and (offset[0], offset[-1]) == (-2.0, 1.0)
    assert sum(p < -0.4 for p in offset) == 32 and sum(-0.4 <= p < 0.4 for p in offset) == 80
    assert sum(p >= 0.4 for p in offset) == 13
    for p in (-1.0, -0.25, -0.1, -0.03, 0.0, 0.02, 0.05, 0.25, 0.5, 0.75):  # the published table's points
        assert p in offset
    learn = sweep_points(compose_config(["perturbation=learn"]).perturbation, "post_activation")
    assert learn["clamp_min"] == learn["clamp_max"] == [round(i / 100, 12) for i in range(101)]
    assert sweep_points(grid("none", kinds=["scale"], magnitude=0.05)) == {"scale": [0.05]}
    one = compose_config(["perturbation=use", "perturbation.magnitudes=[0.1,-0.1]"]).perturbation
    assert sweep_points(one) == {k: [-0.1, 0.1] for k in USE}
    assert expand_grid([{"linspace": [0, 1, 4], "endpoint": False}, 1.0]) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_offset_keeps_max_and_moves_zero_point_by_p_range():
    # Three hidden units over two inputs; unit 2 never fires on these inputs (max 0).
    net = build_model("mlp", "relu", True, hidden=3, in_features=2, site="pre_activation").eval()
    with torch.no_grad():
        net.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net.hidden.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    x = torch.tensor([[0.0, 0.0], [4.0, 2.0], [2.0, 1.0]])  # pre-activations (0,1,0), (4,3,-6), (2,2,-3)
    ranges = network_sweep(net, x, torch.zeros(3, dtype=torch.long)).unit_ranges()
    assert ranges.min.tolist() == [0.0, 1.0, 0.0] and ranges.max.tolist() == [4.0, 3.0, 0.0]
    for p in (-0.5, 0.25, 1.0):
        at_max = perturbed(ranges, "offset", p, torch.tensor([[4.0, 3.0, -6.0]]))[0]
        at_zero = perturbed(ranges, "offset", p, torch.zeros(1, 3))[0]
        assert at_max[:2].tolist() == [4.0, 3.0]  # the max stays where it was
        assert at_zero[:2].tolist() == pytest.approx([p * 4.0, p * 2.0])  # zero moves by p * range
        # The never-active unit (max 0) is left as it is: scale 1, offset 0.
        assert at_max[2].item() == -6.0 and at_zero[2].item() == 0.0
    # clip: c = min + p * range; scale: s = p.
    assert perturbation_values("clip", 0.5, ranges)["upper"].tolist() == [2.0, 2.0, 0.0]
    assert perturbation_values("scale", 0.3, ranges)["scale"].tolist() == pytest.approx([0.3] * 3)


def test_learn_clamps_use_the_layer_range_or_the_units_own():
    ranges = UnitRanges(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([4.0, 3.0, 10.0]))
    layer = perturbation_values("clamp_min", 0.25, ranges)
    assert layer["lower"].tolist() == [2.5] * 3 and layer["upper"].tolist() == [math.inf] * 3  # 0 + 25% of 10
    unit = perturbation_values("clamp_max", 0.5, ranges, unit=1)
    assert unit["upper"].tolist() == [math.inf, 2.0, math.inf] and unit["lower"].tolist() == [-math.inf] * 3
    assert unit["scale"].tolist() == [1.0] * 3 and unit["offset"].tolist() == [0.0] * 3


# ---------------------------------------------------------------- exactness

@pytest.mark.slow
def test_identity_points_give_exactly_the_unperturbed_accuracy(use_run, learn_run, digits):
    for (run_dir, summary), kinds_at_identity in (
            (use_run, {"scale": [1.0], "offset": [0.0], "clip": [1.0, 1.5, 10.0]}),
            (learn_run, {"clamp_min": [0.0], "clamp_max": [1.0]})):
        net = loaded(run_dir)
        sweep = network_sweep(net, digits.x_train, digits.y_train)
        baseline = sweep.baseline
        assert baseline == round(summary["train_acc"] * len(digits.y_train))  # the run's own full forward
        ranges = sweep.unit_ranges()
        for kind, magnitudes in kinds_at_identity.items():
            values = stack_values(kind, magnitudes, ranges)
            assert sweep.correct(**values) == [baseline] * len(magnitudes), kind
            assert naive_counts(net, digits.x_train, digits.y_train, values) == [baseline] * len(magnitudes), kind
        written = rows_of(run_dir, kind="baseline", split="train")
        assert [float(r["accuracy"]) for r in written] == [baseline / len(digits.y_train)]


@pytest.mark.slow
def test_sweep_engine_equals_a_naive_full_forward_for_every_kind(use_run, learn_run, digits):
    for (run_dir, _), kinds, units in ((use_run, USE, (None, 7)), (learn_run, LEARN, (None, 7))):
        net = loaded(run_dir)
        site = net.site
        grids = sweep_points(compose_config([f"perturbation={'use' if site == 'pre_activation' else 'learn'}"])
                             .perturbation, site)
        for split in ("train", "test"):
            x, y = digits.split(split)
            sweep = network_sweep(net, x, y, chunk_rows=700)  # ragged chunks
            ranges = network_sweep(net, digits.x_train, digits.y_train).unit_ranges()
            for unit in units:
                for kind in kinds:
                    points = grids[kind] if unit is None and split == "train" else grids[kind][::4]
                    values = stack_values(kind, points, ranges, unit)
                    assert sweep.correct(**values) == naive_counts(net, x, y, values), (kind, split, unit)


@pytest.mark.parametrize("arch,activation,site", [("mlp", "abs", "pre_activation"),
                                                  ("mlp2_neg", "relu", "pre_activation"),
                                                  ("offset_l2", "abs", "post_activation")])
def test_sweep_engine_is_exact_on_other_architectures(arch, activation, site, digits):
    torch.manual_seed(1)
    net = build_model(arch, activation, arch.startswith("mlp"), site=site).eval()
    x, y = digits.x_test[:600], digits.y_test[:600]
    sweep = network_sweep(net, x, y, chunk_rows=256, workers=1)  # one thread, intra-op threads
    ranges = sweep.unit_ranges()
    for kind in (USE if site == "pre_activation" else LEARN):
        values = stack_values(kind, [-0.3, 0.02, 0.4, 0.9] if kind == "offset" else [0.02, 0.3, 0.7], ranges)
        assert sweep.correct(**values) == naive_counts(net, x, y, values), kind


def test_ties_between_classes_are_settled_as_a_full_forward_pass(digits):
    """Pairs of classes with identical logits on every row: argmax's first-class rule decides every
    prediction, so any other way of picking the top class would show in the counts."""
    torch.manual_seed(2)
    net = build_model("mlp", "relu", True, site="pre_activation").eval()
    with torch.no_grad():
        net.head.weight[1::2] = net.head.weight[0::2]
        net.head.bias[1::2] = net.head.bias[0::2]
    x, y = digits.x_train[:1500], digits.y_train[:1500]
    sweep = network_sweep(net, x, y)
    ranges = sweep.unit_ranges()
    for kind, points in (("scale", [0.05, 0.5, 2.0]), ("clip", [0.3, 0.7]), ("offset", [-0.1, 0.2])):
        values = stack_values(kind, points, ranges)
        assert sweep.correct(**values) == naive_counts(net, x, y, values), kind


def test_run_sweep_takes_chunk_rows_from_the_config_or_its_default(digits):
    """chunk_rows only sets the speed; points_per_pass (an older engine's key) is ignored if present."""
    torch.manual_seed(3)
    net = build_model("mlp", "relu", True).eval()
    data = Splits(digits.x_train[:900], digits.y_train[:900], digits.x_test[:300], digits.y_test[:300])
    plain = {k: v for k, v in grid("use", splits=["train", "test"]).items() if k not in ("chunk_rows", "points_per_pass")}
    rows = [run_sweep(net, data, cfg, log=None)[0] for cfg in (plain, {**plain, "chunk_rows": 128, "points_per_pass": 4})]
    assert rows[0] == rows[1] and len(rows[0]) == 2 * (1 + 325)


def test_docstring_examples_run():
    for module in (perturbation, sweep_engine):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ---------------------------------------------------------------- what the callback wrote

@pytest.mark.slow
def test_callback_writes_every_point_and_the_unit_ranges(use_run, learn_run, digits):
    run_dir, summary = use_run
    with open(run_dir / "perturbation.csv") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS == ("epoch", "kind", "magnitude", "split", "unit", "accuracy", "change",
                                                  "range_of")
    assert {r["epoch"] for r in read_results(run_dir)} == {"300"}  # one sweep, after the 300 epochs
    rows = read_results(run_dir)
    for split in ("train", "test"):
        counts = {k: len(rows_of(run_dir, kind=k, split=split, unit="all")) for k in ("baseline",) + USE}
        assert counts == {"baseline": 1, "scale": 100, "clip": 100, "offset": 125}
    assert all(r["magnitude"] == "" for r in rows if r["kind"] == "baseline")
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert float(rows_of(run_dir, kind="baseline", split="test")[0]["accuracy"]) == pytest.approx(summary["test_acc"])
    assert rows_of(run_dir, kind="offset", magnitude="0.05", split="train")  # fractions, written plainly
    with open(run_dir / "unit_ranges.csv") as f:
        ranges = list(csv.DictReader(f))
    assert tuple(ranges[0]) == RANGE_COLUMNS and len(ranges) == 128
    relu = torch.relu(loaded(run_dir).hidden(digits.x_train).detach())
    assert [float(r["max"]) for r in ranges] == relu.amax(0).tolist()
    assert all(float(r["min"]) >= 0 and float(r["range"]) == float(r["max"]) - float(r["min"]) for r in ranges)
    learn = read_results(learn_run[0])
    assert {r["kind"] for r in learn} == {"baseline", "clamp_min", "clamp_max"} and len(learn) == 1 + 2 * 101


@pytest.mark.slow
def test_relu_offset_costs_more_than_any_scale_from_10_to_1000_percent(use_run):
    """USE's claim 4 on a trained ReLU: distance (offset) matters, intensity (scale) does not."""
    run_dir, _ = use_run
    acc = lambda kind, p: float(rows_of(run_dir, kind=kind, magnitude=repr(p), split="train")[0]["accuracy"])  # noqa
    scales = [float(r["accuracy"]) for r in rows_of(run_dir, kind="scale", split="train")
              if 0.1 <= float(r["magnitude"]) <= 10.0]
    assert len(scales) == 67
    assert max(acc("offset", -0.1), acc("offset", 0.1)) < min(scales)


# ---------------------------------------------------------------- python -m dmlight.perturb

@pytest.mark.slow
def test_perturb_on_a_saved_run_reproduces_the_callback(use_run, tmp_path):
    run_dir, _ = use_run
    copy = perturb_again(run_dir, tmp_path, "perturbation.csv", "perturbation=use", "perturbation.splits=[train,test]")
    assert (copy / "unit_ranges.csv").read_text() == (run_dir / "unit_ranges.csv").read_text()


@pytest.mark.slow
def test_perturb_multirun_appends_one_row_per_point(use_run, tmp_path):
    run_dir, _ = use_run
    copy = copy_run(run_dir, tmp_path)
    before = (copy / "perturbation.csv").read_text()
    done = run_module("dmlight.perturb", "-m", f"run_dir={copy}", "perturbation=offset",
                      "perturbation.magnitude=0.05,-0.05", f"hydra.sweep.dir={tmp_path / 'hydra'}")
    assert done.returncode == 0, done.stderr
    after = (copy / "perturbation.csv").read_text()
    assert after.startswith(before)  # never clobbered
    new = list(csv.reader(after[len(before):].splitlines()))
    # epoch: the saved network's 300 training epochs, as the callback's rows say
    assert [r[:5] for r in new] == [["300", "baseline", "", "train", "all"], ["300", "offset", "0.05", "train", "all"],
                                    ["300", "baseline", "", "train", "all"], ["300", "offset", "-0.05", "train", "all"]]
    written = {r["magnitude"]: r["accuracy"] for r in rows_of(run_dir, kind="offset", split="train")}
    assert [r[5] for r in new[1::2]] == [written["0.05"], written["-0.05"]]


@pytest.mark.slow
def test_a_file_of_an_older_version_keeps_its_columns(use_run, tmp_path):
    """perturbation.csv written before the epoch column: rows appended to it keep its five columns."""
    run_dir, _ = use_run
    copy = copy_run(run_dir, tmp_path)
    old = "kind,magnitude,split,unit,accuracy\nbaseline,,train,all,0.5\n"
    (copy / "perturbation.csv").write_text(old)
    cfg = compose_config(["perturbation=offset", "perturbation.magnitude=0.05"]).perturbation
    perturb(copy, cfg, device="cpu", log=None)
    lines = (copy / "perturbation.csv").read_text().splitlines()
    assert lines[:2] == old.splitlines() and len(lines) == 4
    assert lines[3].startswith("offset,0.05,train,all,") and len(lines[3].split(",")) == 5


@pytest.mark.slow
def test_perturb_refuses_what_does_not_fit_with_a_clear_message(use_run, learn_run, tmp_path):
    use_dir, learn_dir = use_run[0], learn_run[0]
    use_grid = compose_config(["perturbation=use"]).perturbation
    with pytest.raises(PerturbationError, match=r"'clamp_min'.*post_activation.*sits at pre_activation"):
        perturb(use_dir, compose_config(["perturbation=learn"]).perturbation, log=None)
    with pytest.raises(PerturbationError, match=r"'scale'.*pre_activation.*perturbation=learn"):
        perturb(learn_dir, use_grid, log=None)
    with pytest.raises(PerturbationError, match=r"unknown perturbation kind 'warp'; accepted: scale, clip"):
        perturb(use_dir, grid("use", kinds=["warp"]), log=None)
    with pytest.raises(PerturbationError, match=r"unit=128 .* accepted: 0..127"):
        perturb(learn_dir, compose_config(["perturbation=learn", "perturbation.unit=128"]).perturbation, log=None)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(use_dir, incomplete)
    (incomplete / "summary.json").unlink()
    with pytest.raises(PerturbationError, match="no complete run"):
        perturb(incomplete, use_grid, log=None)
    with pytest.raises(PerturbationError, match="does not exist"):
        perturb(tmp_path / "nowhere", use_grid, log=None)
    # From the command line: the message alone, exit status 2, nothing written.
    done = run_module("dmlight.perturb", f"run_dir={incomplete}", "perturbation=use",
                      f"hydra.run.dir={tmp_path / 'hydra'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no complete run" in done.stderr and str(incomplete) in done.stderr
    assert (incomplete / "perturbation.csv").read_text() == (use_dir / "perturbation.csv").read_text()


@pytest.mark.slow
def test_training_refuses_a_sweep_that_cannot_fit_before_it_trains(tmp_path):
    cfg = train_cfg("experiment=learn_distance_metrics", "perturbation=use", "data=synthetic",
                    "trainer.max_epochs=2")
    with pytest.raises(PerturbationError, match="'scale' acts at the pre_activation site"):
        train(cfg, tmp_path)
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "summary.json").exists()
    with pytest.raises(PerturbationError, match="unknown perturbation kind 'bend'"):
        PerturbationSweep(tmp_path, compose_config(["perturbation=use", "perturbation.kinds=[bend]"]).perturbation)
