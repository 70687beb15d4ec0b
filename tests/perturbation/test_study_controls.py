"""The study's controls, each against a reference written here (forward hooks and the formulas of PAPERS.md and
issue 25), not against dmlight's engine: the per-unit scale (s_i = p ** u_i), the size-of-change column
(mean over rows of ||act(h') - act(h)|| / ||act(h)||), ranges taken where the perturbation acts, sweeps of every
hidden layer in one run, and the homogeneity identity on real trained bias-free ReLU and Abs nets."""
import csv
import math

import pytest
import torch

from dmlight.data.datasets import Splits
from dmlight.perturbation.driver import run_sweep
from dmlight.perturbation.engine import HookSweep, network_sweep
from dmlight.perturbation.formulas import stack_values
from dmlight.runs.load import load_run
from dmlight.train import train
from tests.conftest import train_cfg

UNIT_SEED = 57  # not the default draw
POINTS = [-0.5, 0.05, 0.3, 0.9]  # offset's; the scales use the positive ones


def u_draw(n: int, seed: int = UNIT_SEED) -> torch.Tensor:
    """u_i ~ U[0, 1) from torch's generator seeded with `seed`, in float64 (the issue's stated draw)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(net, layer: str, act, x, y, kind: str, p: float, lo: torch.Tensor, hi: torch.Tensor):
    """(accuracy, size of change) of one point, by a forward hook on `layer` that applies the formula."""
    n = lo.numel()
    if kind == "scale":
        s, t = torch.full((n,), p, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    elif kind == "unit_scale":
        s, t = p ** u_draw(n), torch.zeros(n, dtype=torch.float64)
    else:  # offset: keep each unit's max, move its zero to p r; a unit whose max is 0 stays
        lo64, hi64 = lo.double(), hi.double()
        r = hi64 - lo64
        s = torch.where(hi64 != 0, (hi64 - p * r) / torch.where(hi64 != 0, hi64, 1.0), 1.0)
        t = torch.where(hi64 != 0, p * r, 0.0)
    s, t = s.float(), t.float()
    ratios = []

    def hook(_, __, out):
        new = out * s + t
        a, a_new = act(out), act(new)
        for row, row_new in zip(a, a_new):
            if row.norm() > 0:
                ratios.append(float((row_new - row).norm() / row.norm()))
        return new

    handle = net.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            acc = float((net(x).argmax(1) == y).float().mean())
    finally:
        handle.remove()
    return acc, sum(ratios) / len(ratios)


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    """A [64, 32] ReLU net, 60 epochs of Adam on the digits, swept at every hidden layer in one run."""
    run_dir = tmp_path_factory.mktemp("deep_study")
    cfg = train_cfg("experiment=use_distance_metrics", "arch.hidden=[64,32]", "seed=5", "optimizer=adam",
                    "optimizer.lr=0.001", "trainer.max_epochs=60", "run.checkpoint_every=60",
                    "perturbation.kinds=[scale,unit_scale,offset]", "perturbation.layer=all",
                    f"perturbation.unit_seed={UNIT_SEED}", "perturbation.splits=[train,test]")
    scales = [p for p in POINTS if p > 0]
    cfg.perturbation.grids = {"scale": scales, "unit_scale": scales, "offset": POINTS}
    train(cfg, run_dir)
    return run_dir, load_run(run_dir)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("layer,act_name,filename", [("hidden", "activation", "perturbation.csv"),
                                                     ("hidden2", "activation2", "perturbation_hidden2.csv")])
def test_every_layer_is_swept_in_one_run_and_matches_the_hook_reference(deep_run, layer, act_name, filename):
    run_dir, run = deep_run
    net = run.model
    act = net.get_submodule(act_name)
    x_train, y_train, x_test, y_test = run.data()
    with torch.no_grad():  # the layer's activation output on the training set: the papers' unit ranges
        trunk = torch.nn.Sequential(*list(net)[: [n for n, _ in net.named_children()].index(act_name) + 1])
        a = trunk(x_train)
    lo, hi = a.amin(0), a.amax(0)
    rows = [r for r in read(run_dir / filename) if r["kind"] != "baseline" and r["epoch"] == "60"]
    scales = [p for p in POINTS if p > 0]
    assert sorted((r["kind"], r["split"]) for r in rows) == sorted(
        [(k, s) for s in ("train", "test") for k in ("scale", "unit_scale") for _ in scales]
        + [("offset", s) for s in ("train", "test") for _ in POINTS])
    for r in rows:
        x, y = (x_train, y_train) if r["split"] == "train" else (x_test, y_test)
        acc, change = reference(net, layer, act, x, y, r["kind"], float(r["magnitude"]), lo, hi)
        assert float(r["accuracy"]) == pytest.approx(acc, abs=1.5 / len(y)), r  # one near-tie at most
        assert float(r["change"]) == pytest.approx(change, rel=1e-4, abs=1e-6), r
        assert r["range_of"] == "activation_output"
    # ReLU is homogeneous: a uniform scale p changes its output by exactly 1 - p, row by row
    scale_changes = [float(r["change"]) for r in rows if r["kind"] == "scale"]
    assert scale_changes == pytest.approx([1 - float(r["magnitude"]) for r in rows if r["kind"] == "scale"], rel=1e-5)


@pytest.mark.slow
def test_the_hook_engine_measures_the_same_change_as_the_split_engine(deep_run):
    _, run = deep_run
    net = run.model
    x, y, _, _ = run.data()
    split = network_sweep(net, x, y, "hidden2", chunk_rows=700)  # ragged blocks
    hook = HookSweep(net, net.hidden2, [(x[:1500], y[:1500]), (x[1500:], y[1500:])], net.activation2)
    for of in ("activation_output", "site_output"):
        assert torch.equal(split.unit_ranges(of).max, hook.unit_ranges(of).max)
    values = stack_values("unit_scale", [0.02, 0.5], split.unit_ranges(), unit_seed=UNIT_SEED)
    (c1, ch1), (c2, ch2) = split.measure(**values), hook.measure(**values)
    assert c1 == c2 and ch1 == pytest.approx(ch2, rel=1e-5) and min(ch1) > 0.1


@pytest.mark.slow
def test_site_output_ranges_are_the_pre_activation_values_and_say_so(deep_run):
    _, run = deep_run
    net = run.model
    x, y, _, _ = run.data()
    with torch.no_grad():
        h = net.hidden(x)  # where the perturbation acts: the Linear's output, before the ReLU
    rows, ranges = run_sweep(net, Splits(x, y, x, y),
                             {"kinds": ["clip"], "magnitudes": [0.5], "ranges": "site_output"}, log=None)
    assert torch.equal(ranges.min, h.amin(0)) and torch.equal(ranges.max, h.amax(0))
    assert h.amin(0).min() < 0  # not the ReLU's output, whose min is 0
    assert {r["range_of"] for r in rows} == {"site_output"}
    with pytest.raises(ValueError, match="perturbation.ranges='bogus'; accepted: activation_output, site_output"):
        run_sweep(net, None, {"kinds": ["clip"], "magnitudes": [0.5], "ranges": "bogus"}, log=None)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "abs"])
def test_a_uniform_scale_cannot_move_a_bias_free_homogeneous_net_but_a_unit_scale_can(tmp_path, activation):
    """LEARN's one-hidden-layer net has no head bias: logits(s h) = s logits(h) for s > 0, so the uniform scale
    keeps every prediction (to within a floating-point near-tie) at every p, trained or not; unit_scale does not."""
    p_grid = [0.01, 0.03, 0.1, 0.3, 0.7, 2.0, 10.0]
    cfg = train_cfg("experiment=learn_distance_metrics", "arch=mlp", "arch.site=pre_activation", f"activation={activation}",
                    "seed=13", "trainer.max_epochs=40", "optimizer=adam", "optimizer.lr=0.001",
                    "perturbation.kinds=[scale,unit_scale]", f"perturbation.magnitudes=[{','.join(map(str, p_grid))}]",
                    "perturbation.splits=[train,test]")
    summary = train(cfg, tmp_path)
    assert summary["train_acc"] > 0.85  # a trained net, not a random one
    rows = read(tmp_path / "perturbation.csv")
    for split in ("train", "test"):
        n = 4000 if split == "train" else 1000
        base = next(float(r["accuracy"]) for r in rows if r["kind"] == "baseline" and r["split"] == split)
        scaled = [float(r["accuracy"]) for r in rows if r["kind"] == "scale" and r["split"] == split]
        assert len(scaled) == len(p_grid) and all(abs(a - base) <= 2 / n for a in scaled), (split, base, scaled)
        per_unit = [float(r["accuracy"]) for r in rows if r["kind"] == "unit_scale" and r["split"] == split]
        assert min(per_unit) < base - 0.02, (split, base, per_unit)
    assert not math.isnan(float(rows[1]["change"]))
