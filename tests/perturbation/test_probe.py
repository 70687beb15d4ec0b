"""DistanceProbe on models dmlight does not build: a small CNN trained here with Lightning, checked
against a reference written in this file from PAPERS.md's formulas (it does not use
dmlight.perturbation.formulas); the papers' MLPs through the hook path against dmlight's own sweep; sweeps
during training; loggers; errors; the two engines against each other. Trainings are real and short."""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dmlight.perturbation import driver as engine_mod
from dmlight.config import CONF_DIR
from dmlight.data.datasets import load_data
from dmlight.models.layers import Abs
from dmlight.perturbation.probe import DistanceProbe, ProbeError
from dmlight.train import train
from tests.conftest import member_dir
from tests.conftest import crash_at_epoch, kill_after_first_checkpoint, train_cfg

# Uneven grids, a handful of points each (magnitudes as fractions).
USE_GRID = {"kinds": ["scale", "clip", "offset"],
            "grids": {"scale": [0.07, 0.5, 3.0], "clip": [0.03, 0.2, 0.45, 0.9], "offset": [-0.6, -0.05, 0.02, 0.3]}}
LEARN_GRID = {"kinds": ["clamp_min", "clamp_max"],
              "grids": {"clamp_min": [0.0, 0.04, 0.13, 0.5], "clamp_max": [0.02, 0.3, 0.77, 1.0]}}
DEAD = 3  # the CNN's conv channel that never fires: offset's "max 0" rule is exercised


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine torch's own threads wait on each other at every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_data("mnist5k")  # 4,000 train / 1,000 test real digits, raw 0..255


# ---------------------------------------------------------------- models written here

class DigitCNN(pl.LightningModule):
    """conv -> ReLU -> max pool -> flatten -> Linear -> ReLU -> Linear, wired in forward (not a
    Sequential, so the probe takes its hook path). Conv channel DEAD is made to never fire: its
    weights are negative and its bias -1 on inputs in 0..1, so ReLU gives it no gradient."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 5, stride=2)  # 4 x 12 x 12
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 4 x 6 x 6
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.act2 = nn.ReLU()
        self.fc2 = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv.weight[DEAD] = -self.conv.weight[DEAD].abs() - 0.01
            self.conv.bias[DEAD] = -1.0

    def forward(self, x):
        x = (x / 255.0).view(-1, 1, 28, 28)
        return self.fc2(self.act2(self.fc1(self.pool(self.act1(self.conv(x))).flatten(1))))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)  # Adam: zero gradients leave DEAD as it is


class TinyMLP(pl.LightningModule):
    """784 -> 12 -> ReLU -> 10, wired in forward."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden, self.act, self.head = nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 10)

    def forward(self, x):
        return self.head(self.act(self.hidden(x / 255.0)))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


class Frozen(pl.LightningModule):
    """Any trained network as a LightningModule that fit() leaves as it is: the probe only watches."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return None  # no loss: Lightning takes no optimizer step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(module, callbacks, max_epochs, train_loader, val_loader=None, logger=False, **kw) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=callbacks, **kw)
    trainer.fit(module, train_loader, val_loader)
    return trainer


def loader(x, y, batch_size, shuffle=False):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def watch_only(net: nn.Module, probes, x, y) -> None:
    """Run `probes` on a trained `net` without training it (one step that takes no optimizer step)."""
    fit(Frozen(net), probes, 1, loader(x[:8], y[:8], 8), limit_train_batches=1)


def sample(x, y, n: int, seed: int):
    """n rows drawn at random (mnist5k's splits are sorted by class)."""
    rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[rows], y[rows]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def accuracies(rows, epoch=None) -> dict[tuple[str, str, str, str], str]:
    """{(kind, magnitude, split, unit): accuracy} of the rows (of one epoch); a point only once."""
    rows = [r for r in rows if epoch is None or r["epoch"] == str(epoch)]
    keys = [(r["kind"], r["magnitude"], r["split"], r["unit"]) for r in rows]
    assert len(set(keys)) == len(keys), [k for k, n in Counter(keys).items() if n > 1]
    return {k: r["accuracy"] for k, r in zip(keys, rows)}


# ---------------------------------------------------------------- the reference, from PAPERS.md

@torch.inference_mode()
def own_min_max(model, module, x, batch=700) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit min and max of `module`'s output over the rows of x (a conv channel: over rows and positions)."""
    seen = []

    def hook(_, __, out):
        dims = [d for d in range(out.ndim) if d != 1]
        seen.append((out.amin(dims), out.amax(dims)))

    handle = module.register_forward_hook(hook)
    for i in range(0, len(x), batch):
        model(x[i: i + batch])
    handle.remove()
    return torch.stack([a for a, _ in seen]).amin(0), torch.stack([b for _, b in seen]).amax(0)


def own_values(kind, p, lo, hi, unit=None) -> tuple[torch.Tensor, ...]:
    """(s, t, lower, upper) per unit, from PAPERS.md, with Python floats (float64), then cast to float32
    as the probe stores them (float32 activations; the cast matters only at a boundary).

    USE: scale s = p; clip c = min + p r (upper bound); offset s = (max - p r) / max, t = p r, and a
    unit whose max is 0 keeps s = 1, t = 0. LEARN: clamp_min / clamp_max at v = min + p r, from the
    layer's own min and max over every unit (whole layer), or unit k's alone (unit=k)."""
    lo, hi = lo.double().tolist(), hi.double().tolist()
    n = len(lo)
    s, t, lower, upper = [1.0] * n, [0.0] * n, [-math.inf] * n, [math.inf] * n
    for k in range(n):
        r = hi[k] - lo[k]
        if kind == "scale":
            s[k] = p
        elif kind == "clip":
            upper[k] = lo[k] + p * r
        elif kind == "offset" and hi[k] != 0:
            s[k], t[k] = (hi[k] - p * r) / hi[k], p * r
        elif kind in ("clamp_min", "clamp_max"):
            if unit is None:
                v = min(lo) + p * (max(hi) - min(lo))
            else:
                v = lo[unit] + p * (hi[unit] - lo[unit])
            (lower if kind == "clamp_min" else upper)[k] = v
    if unit is not None:
        s, t, lower, upper = ([v[k] if k == unit else ident for k in range(n)]
                              for v, ident in ((s, 1.0), (t, 0.0), (lower, -math.inf), (upper, math.inf)))
    return tuple(torch.tensor(v, dtype=torch.float64).float() for v in (s, t, lower, upper))


@torch.inference_mode()
def own_accuracy(model, site, x, y, values=None, batch=450) -> float:
    """Accuracy of model on (x, y) with y = clamp(out * s + t, lower, upper) per unit at `site`'s output."""
    handle = None
    if values is not None:
        def hook(_, __, out):
            s, t, lower, upper = (v.view(-1, *[1] * (out.ndim - 2)) for v in values)
            return torch.clamp(out * s + t, min=lower, max=upper)
        handle = site.register_forward_hook(hook)
    correct = sum(int((model(x[i: i + batch]).argmax(1) == y[i: i + batch]).sum()) for i in range(0, len(x), batch))
    if handle is not None:
        handle.remove()
    return correct / len(y)


# ---------------------------------------------------------------- 1. a CNN against the reference

@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, digits):
    """DigitCNN, seed 7, 3 epochs on the 4,000 training digits in batches of 133 (the last has 10),
    the 1,000 others as val in batches of 300; probes on the conv layer (per channel) and fc1."""
    out = tmp_path_factory.mktemp("cnn")
    model = DigitCNN(seed=7)
    probes = [DistanceProbe("conv", USE_GRID, splits=("train", "val"), dirpath=out, filename="conv_use.csv"),
              DistanceProbe("fc1", USE_GRID, splits=("train", "val"), dirpath=out, filename="fc1_use.csv",
                            every_n_epochs=2),  # val at epoch 0 too, before any validation ran
              DistanceProbe("conv", {**USE_GRID, "unit": 1}, dirpath=out, filename="conv_use_unit1.csv"),
              DistanceProbe("conv", LEARN_GRID, splits=("train", "val"), dirpath=out, filename="conv_learn.csv"),
              DistanceProbe("fc1", {**LEARN_GRID, "unit": 5}, dirpath=out, filename="fc1_learn_unit5.csv")]
    fit(model, probes, 3, loader(digits.x_train, digits.y_train, 133, shuffle=True),
        loader(digits.x_test, digits.y_test, 300))
    return out, model.eval()


def reference(model, site, lo, hi, grid, digits, splits=("train", "val"), unit=None) -> dict:
    """{(kind, magnitude, split, unit): accuracy} by the reference at `site` (module), with ranges (lo, hi)."""
    expected = {}
    for split in splits:
        x, y = (digits.x_train, digits.y_train) if split == "train" else (digits.x_test, digits.y_test)
        expected[("baseline", "", split, "all")] = own_accuracy(model, site, x, y)
        for kind, magnitudes in grid["grids"].items():
            for p in magnitudes:
                expected[(kind, repr(p), split, "all" if unit is None else str(unit))] = \
                    own_accuracy(model, site, x, y, own_values(kind, p, lo, hi, unit))
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("layer,activation", [("conv", "act1"), ("fc1", "act2")])
def test_use_kinds_on_a_cnn_equal_the_papers_formulas(cnn_run, digits, layer, activation):
    out, model = cnn_run
    site, act = model.get_submodule(layer), model.get_submodule(activation)
    lo, hi = own_min_max(model, act, digits.x_train)  # ranges of the activation's output, training data
    if layer == "conv":
        assert hi[DEAD] == 0 and (hi > 0).sum() == 3  # the max-0 rule is exercised, the others fire
    rows = read_csv(out / f"{layer}_use.csv")
    assert {r["layer"] for r in rows} == {layer}
    splits_at = {(r["epoch"], r["split"]) for r in rows}
    assert splits_at == ({(e, s) for e in ("0", "2", "3") for s in ("train", "val")} if layer == "fc1" else
                         {("3", "train"), ("3", "val")})  # val at epoch 0 too, before any validation ran
    written = accuracies(rows, epoch=3)
    expected = reference(model, site, lo, hi, USE_GRID, digits)
    assert written.keys() == expected.keys()
    assert {k: float(v) for k, v in written.items()} == expected
    # The grid is not degenerate: the points move accuracy, some down, and not all by the same.
    assert len(set(expected.values())) >= 12
    assert min(expected.values()) < expected[("baseline", "", "train", "all")] - 0.05
    ranges = read_csv(out / f"{layer}_use_{layer}_unit_ranges.csv")
    assert [float(r["min"]) for r in ranges] == lo.tolist() and [float(r["max"]) for r in ranges] == hi.tolist()
    if layer == "conv":  # channel 1 alone, the others as they are
        alone = accuracies(read_csv(out / "conv_use_unit1.csv"), epoch=3)
        expected = reference(model, site, lo, hi, USE_GRID, digits, ("train",), unit=1)
        assert {k: float(v) for k, v in alone.items()} == expected
        assert len(set(alone.values())) >= 5


@pytest.mark.slow
def test_learn_clamps_on_a_cnn_equal_the_papers_formulas(cnn_run, digits):
    """post_activation: the activation's output is clamped; one threshold for the whole layer from
    its overall min and max, or unit 5's own range alone."""
    out, model = cnn_run
    for layer, act_name, filename, unit, splits in (("conv", "act1", "conv_learn.csv", None, ("train", "val")),
                                                    ("fc1", "act2", "fc1_learn_unit5.csv", 5, ("train",))):
        act = model.get_submodule(act_name)
        lo, hi = own_min_max(model, act, digits.x_train)
        written = accuracies(read_csv(out / filename), epoch=3)
        expected = reference(model, act, lo, hi, LEARN_GRID, digits, splits, unit)
        assert written.keys() == expected.keys(), layer
        assert {k: float(v) for k, v in written.items()} == expected, layer
        assert len(set(expected.values())) >= 5, layer
    # clamp_max at 2% of the conv layer's range flattens almost everything: far below the baseline
    conv = accuracies(read_csv(out / "conv_learn.csv"), epoch=3)
    assert float(conv[("clamp_max", "0.02", "train", "all")]) < float(conv[("baseline", "", "train", "all")]) - 0.2


# ---------------------------------------------------------------- 2. the papers' MLPs, hook path

@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    """ReLU_Bias (USE, full USE sweep on train and test) and ReLU (LEARN, clamp sweep), 100 epochs each."""
    out = tmp_path_factory.mktemp("paper")
    use = train(train_cfg("experiment=use_distance_metrics", "trainer.max_epochs=100", "seed=5",
                          "perturbation.splits=[train,test]", "run.checkpoint_every=100"), out / "use")
    learn = train(train_cfg("experiment=learn_distance_metrics", "perturbation=learn", "trainer.max_epochs=100",
                            "seed=11", "run.checkpoint_every=100"), out / "learn")
    assert use["train_acc"] > 0.8 and learn["train_acc"] > 0.8
    return out


@pytest.mark.slow
@pytest.mark.parametrize("run,kinds,splits", [("use", ["scale"], ("train", "test")),
                                              ("use", ["clip"], ("train", "test")),
                                              ("use", ["offset"], ("train", "test")),
                                              ("learn", ["clamp_min", "clamp_max"], ("train",))])
def test_the_hook_path_gives_dmlights_own_numbers_on_the_papers_mlps(paper_runs, digits, monkeypatch, tmp_path, run,
                                                                     kinds, splits):
    """The trained Network inside a LightningModule (not a Sequential at the root): the probe at
    `net.hidden` runs forward hooks, on the conf file's full grid, and gives perturbation.csv's rows."""
    from dmlight.runs.load import load_run

    run_dir = paper_runs / run
    net = load_run(run_dir).model
    weights = {k: v.clone() for k, v in net.state_dict().items()}

    def no_split_sweep(*a, **k):
        raise AssertionError("the probe took the Sequential path")

    monkeypatch.setattr(engine_mod, "SplitSweep", no_split_sweep)
    grid = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "perturbation" / f"{run}.yaml"))
    grid = {"kinds": kinds, "grids": {k: grid["grids"][k] for k in kinds}}
    data = {"train": (digits.x_train, digits.y_train), "test": (digits.x_test, digits.y_test)}
    probe = DistanceProbe("net.hidden", grid, splits=splits, data=data, dirpath=tmp_path, chunk_rows=1500,
                          log=None)
    watch_only(net, [probe], digits.x_train, digits.y_train)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())

    own = accuracies(read_csv(run_dir / "perturbation.csv"), epoch=100)
    own = {k: v for k, v in own.items() if k[0] in ("baseline", *kinds) and k[2] in splits}
    probed = accuracies(read_csv(tmp_path / "probe.csv"))
    sizes = {"scale": 100, "clip": 100, "offset": 125, "clamp_min": 101, "clamp_max": 101}
    assert len(probed) == len(splits) * (1 + sum(sizes[k] for k in kinds))
    assert probed == own
    assert len(set(probed.values())) > 20  # the sweep really moves accuracy


# ---------------------------------------------------------------- 3. sweeps during training

def conf_grid(name: str, key: str) -> dict[str, list[float]]:
    """A conf/perturbation file's grid `key` (grids or during_grids), expanded here with numpy."""
    spec = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "perturbation" / f"{name}.yaml"))[key]
    out = {}
    for kind, segments in spec.items():
        points = []
        for seg in segments:
            fn = np.linspace if "linspace" in seg else np.geomspace
            start, stop, num = seg.get("linspace") or seg.get("geomspace")
            points += fn(start, stop, num, endpoint=seg.get("endpoint", True)).tolist()
        out[kind] = sorted(points)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("max_epochs,every,epochs", [(7, 3, {0, 3, 6, 7}), (6, 3, {0, 3, 6}), (5, 1, set(range(6)))])
def test_sweeps_during_training_come_at_0_n_2n_and_the_end(tmp_path, digits, max_epochs, every, epochs):
    x, y = sample(digits.x_train, digits.y_train, 900, seed=max_epochs)
    probes = [DistanceProbe("hidden", "use", every_n_epochs=every, dirpath=tmp_path, log=None),
              DistanceProbe("hidden", "learn", every_n_epochs=every, dirpath=tmp_path, filename="learn.csv", log=None)]
    fit(TinyMLP(seed=4), probes, max_epochs, loader(x, y, 128))  # 8 batches, the last of 4 rows
    for name, filename in (("use", "probe.csv"), ("learn", "learn.csv")):
        rows = read_csv(tmp_path / filename)
        assert {int(r["epoch"]) for r in rows} == epochs
        full, coarse = conf_grid(name, "grids"), conf_grid(name, "during_grids")
        for epoch in epochs:
            points = {}
            for r in rows:
                if int(r["epoch"]) == epoch and r["kind"] != "baseline":
                    points.setdefault(r["kind"], []).append(float(r["magnitude"]))
            want = full if epoch == max_epochs else coarse
            assert points.keys() == want.keys(), (name, epoch)
            for kind in want:
                assert np.allclose(sorted(points[kind]), want[kind], rtol=0, atol=1e-12), (name, epoch, kind)
            assert sum(r["kind"] == "baseline" and int(r["epoch"]) == epoch for r in rows) == 1
        # the coarse points are points of the full grid, written the same way
        final = {(r["kind"], r["magnitude"]) for r in rows if int(r["epoch"]) == max_epochs}
        during = {(r["kind"], r["magnitude"]) for r in rows if int(r["epoch"]) < max_epochs}
        assert during < final
    sizes = {k: len(v) for k, v in conf_grid("use", "during_grids").items()}
    assert sizes == {"scale": 34, "clip": 34, "offset": 28}
    use0 = {(r["kind"], r["magnitude"]) for r in read_csv(tmp_path / "probe.csv") if r["epoch"] == "0"}
    assert {("offset", "-0.1"), ("offset", "0.1"), ("scale", "0.1")} <= use0  # USE claim 4's points


@pytest.mark.slow
def test_training_that_ends_by_max_steps_gets_one_sweep_at_its_last_epoch(tmp_path, digits):
    """max_steps = 3 epochs of 7 batches (max_epochs is then -1): epoch 3 is the end, swept once, on the full grid."""
    x, y = sample(digits.x_train, digits.y_train, 700, seed=23)
    grid = {**USE_GRID, "during_grids": {"clip": [0.2, 0.9]}}
    fit(TinyMLP(seed=6), [DistanceProbe("hidden", grid, every_n_epochs=3, dirpath=tmp_path, log=None)], None,
        loader(x, y, 100), max_steps=21)
    rows = read_csv(tmp_path / "probe.csv")
    assert Counter(r["epoch"] for r in rows) == {"0": 1 + 3 + 2 + 4, "3": 1 + 3 + 4 + 4}


@pytest.mark.slow
def test_the_probe_does_not_change_the_training_it_watches(tmp_path, digits):
    """Sweeping reads the (shuffled) training loader; that must not draw from the RNG the next epoch's
    shuffle uses: the same seed trains to the same weights with and without a probe."""
    x, y = sample(digits.x_train, digits.y_train, 1000, seed=5)
    weights = []
    for probes in ([], [DistanceProbe("hidden", USE_GRID, every_n_epochs=1, dirpath=tmp_path, log=None)]):
        torch.manual_seed(21)
        model = TinyMLP(seed=3)
        fit(model, probes, 3, loader(x, y, 96, shuffle=True))
        weights.append(model.state_dict())
    assert (tmp_path / "probe.csv").exists()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class FrozenDropout(TinyMLP):
    """A Dropout its author keeps in eval mode (as a frozen part of a fine-tuned model is)."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.drop = nn.Dropout(0.5).eval()

    def forward(self, x):
        return self.head(self.act(self.drop(self.hidden(x / 255.0))))


@pytest.mark.slow
def test_the_probe_leaves_each_module_in_its_own_mode(tmp_path, digits):
    x, y = sample(digits.x_train, digits.y_train, 600, seed=31)
    weights = []
    for probes in ([], [DistanceProbe("hidden", USE_GRID, every_n_epochs=1, dirpath=tmp_path, log=None)]):
        torch.manual_seed(1)
        model = FrozenDropout(seed=3)
        fit(model, probes, 2, loader(x, y, 128))
        assert not model.drop.training
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ---------------------------------------------------------------- 4. dmlight's training with sweeps during it

COMMON = ["experiment=use_distance_metrics", "perturbation=offset", "perturbation.every_n_epochs=4",
          "trainer.max_epochs=10", "run.checkpoint_every=10", "run.log_every=5"]


@pytest.mark.slow
def test_an_ensemble_sweeps_during_training_as_its_solo_runs_do(tmp_path):
    train(train_cfg(*COMMON, "seeds=[3,8]", f"paths.output_dir={tmp_path}/ens"))
    for seed in (3, 8):
        train(train_cfg(*COMMON, f"seed={seed}", f"paths.output_dir={tmp_path}/solo"))
    for seed in (3, 8):
        solo = member_dir(train_cfg(*COMMON, f"paths.output_dir={tmp_path}/solo"), seed)
        ens = member_dir(train_cfg(*COMMON, f"paths.output_dir={tmp_path}/ens"), seed)
        rows = read_csv(solo / "perturbation.csv")
        assert Counter(r["epoch"] for r in rows) == {"0": 29, "4": 29, "8": 29, "10": 126}
        assert (ens / "perturbation.csv").read_bytes() == (solo / "perturbation.csv").read_bytes()
    one, other = (read_csv(member_dir(train_cfg(*COMMON, f"paths.output_dir={tmp_path}/solo"), s) / "perturbation.csv")
                  for s in (3, 8))
    assert [r["accuracy"] for r in one] != [r["accuracy"] for r in other]  # the members really differ


@pytest.mark.slow
def test_a_killed_and_resumed_run_sweeps_each_epoch_once(tmp_path, capsys):
    args = ["experiment=use_distance_metrics", "perturbation=offset", "perturbation.every_n_epochs=3",
            "trainer.max_epochs=30", "trainer.accelerator=cpu", "run.checkpoint_every=4", "run.log_every=2",
            "run.progress_every=0", "seed=13", "run.num_threads=1"]  # the threads of both processes: the same bits
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(args, killed)
    before = {r["epoch"] for r in read_csv(killed / "perturbation.csv")}
    assert {"0", "3"} <= before and "30" not in before  # killed after sweeps during training, before the end
    train(train_cfg(*args), killed)
    assert "resuming" in capsys.readouterr().out
    train(train_cfg(*args), tmp_path / "straight")
    rows = read_csv(killed / "perturbation.csv")
    assert Counter(r["epoch"] for r in rows) == {**{str(e): 29 for e in range(0, 30, 3)}, "30": 126}
    assert (killed / "perturbation.csv").read_bytes() == (tmp_path / "straight" / "perturbation.csv").read_bytes()


@pytest.mark.slow
def test_a_run_resumed_from_before_its_last_sweep_does_not_sweep_that_epoch_again(tmp_path, monkeypatch):
    """A crash at epoch 7, after the sweep at 6 and the checkpoint at 4: the rerun trains epochs 5.. again
    and must not write epoch 6's rows twice."""
    args = [*COMMON[:2], "perturbation.every_n_epochs=3", "trainer.max_epochs=11", "run.checkpoint_every=4",
            "seed=2"]
    crash_at_epoch(monkeypatch, train_cfg(*args), tmp_path / "crashed", 7)
    assert Counter(r["epoch"] for r in read_csv(tmp_path / "crashed" / "perturbation.csv")) == \
        {"0": 29, "3": 29, "6": 29}
    train(train_cfg(*args), tmp_path / "crashed")  # resumes from epoch 4's checkpoint
    train(train_cfg(*args), tmp_path / "straight")
    rows = read_csv(tmp_path / "crashed" / "perturbation.csv")
    assert Counter(r["epoch"] for r in rows) == {"0": 29, "3": 29, "6": 29, "9": 29, "11": 126}
    assert (tmp_path / "crashed" / "perturbation.csv").read_bytes() == \
        (tmp_path / "straight" / "perturbation.csv").read_bytes()


# ---------------------------------------------------------------- 5. loggers

class Recorder(pl.loggers.Logger):
    """A logger that keeps what it is given."""

    def __init__(self):
        super().__init__()
        self.logged: dict[tuple[int, str], float] = {}

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.update({(step, k): v for k, v in metrics.items()})


def expected_metrics(rows, batches_per_epoch: int) -> dict[tuple[int, str], float]:
    """probe.csv's rows as the keys the probe logs, at the step of each sweep's epoch."""
    out = {}
    for r in rows:
        tail = "baseline" if r["kind"] == "baseline" else f"{r['kind']}/{format(float(r['magnitude']), 'g')}"
        out[(int(r["epoch"]) * batches_per_epoch, f"probe/{r['layer']}/{r['split']}/{tail}")] = float(r["accuracy"])
    return out


def csv_logger_metrics(path) -> dict[tuple[int, str], float]:
    out = {}
    for r in read_csv(path):
        out.update({(int(r["step"]), k): float(v) for k, v in r.items() if k.startswith("probe/") and v != ""})
    return out


def probed_fit(tmp_path, digits, loggers):
    x, y = sample(digits.x_train, digits.y_train, 700, seed=17)
    probes = [DistanceProbe("hidden", USE_GRID, every_n_epochs=2, splits=("train", "val"), dirpath=tmp_path, log=None),
              DistanceProbe("hidden", LEARN_GRID, dirpath=tmp_path, filename="learn.csv", log=None)]
    fit(TinyMLP(seed=9), probes, 3, loader(x, y, 100), loader(*sample(digits.x_test, digits.y_test, 250, seed=2), 100),
        logger=loggers)
    return expected_metrics(read_csv(tmp_path / "probe.csv") + read_csv(tmp_path / "learn.csv"), 7)


@pytest.mark.slow
def test_every_logger_gets_the_numbers_of_probe_csv(tmp_path, digits):
    from pytorch_lightning.loggers import CSVLogger

    csv_logger, recorder = CSVLogger(tmp_path / "logs", name="probe"), Recorder()
    expected = probed_fit(tmp_path, digits, [csv_logger, recorder])
    # 3 USE sweeps on 2 splits, 1 LEARN sweep on train whose baseline key is the final USE sweep's (same value)
    assert len(expected) == 3 * 2 * 12 + 8
    assert {k: v for k, v in recorder.logged.items() if k[1].startswith("probe/")} == expected
    assert csv_logger_metrics(Path(csv_logger.log_dir) / "metrics.csv") == expected
    assert "probe/hidden/val/offset/-0.05" in {k for _, k in expected}


@pytest.mark.slow
def test_tensorboard_gets_the_numbers_of_probe_csv(tmp_path, digits):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (make install adds it)")
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path / "tb", name="probe")
    expected = probed_fit(tmp_path, digits, [tb])
    events = list(Path(tb.log_dir).glob("events.out.tfevents.*"))
    assert events
    logged = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            logged.update({(e.step, tag): e.value for e in acc.Scalars(tag) if tag.startswith("probe/")})
    assert logged.keys() == expected.keys()
    assert all(logged[k] == pytest.approx(v, abs=1e-7) for k, v in expected.items())  # TensorBoard keeps float32


# ---------------------------------------------------------------- 6. errors

class NotLogits(TinyMLP):
    def forward(self, x):
        return {"logits": super().forward(x)}


def test_a_layer_that_is_not_a_submodule_is_refused_before_training(tmp_path, digits):
    model = DigitCNN(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ProbeError) as err:
        fit(model, [DistanceProbe("conv2", USE_GRID, dirpath=tmp_path)], 2,
            loader(digits.x_train[:300], digits.y_train[:300], 100))
    message = str(err.value)
    assert "'conv2'" in message and "is not a submodule of DigitCNN" in message
    assert all(name in message for name in ("conv", "act1", "pool", "fc1", "act2", "fc2"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any step


@pytest.mark.slow
def test_a_split_without_data_is_refused_by_name(tmp_path, digits):
    with pytest.raises(ProbeError, match=r"no val data: the Trainer has no val dataloader.*data=\{'val'"):
        fit(TinyMLP(seed=1), [DistanceProbe("hidden", USE_GRID, splits=("train", "val"), dirpath=tmp_path)], 1,
            loader(digits.x_train[:300], digits.y_train[:300], 100))


def test_the_test_split_without_data_is_refused_before_training(tmp_path, digits):
    model = TinyMLP(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ProbeError, match=r"no test data: Trainer.fit has no test dataloader.*data=\{'test'"):
        fit(model, [DistanceProbe("hidden", USE_GRID, splits=("train", "test"), dirpath=tmp_path)], 2,
            loader(digits.x_train[:300], digits.y_train[:300], 100))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_n_epochs_must_be_a_whole_number_from_1():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ProbeError, match=rf"every_n_epochs={bad!r}; accepted: a whole number >= 1"):
            DistanceProbe("hidden", USE_GRID, every_n_epochs=bad)


def test_use_and_learn_kinds_in_one_probe_are_refused():
    with pytest.raises(ProbeError, match="mix sites"):
        DistanceProbe("hidden", {"kinds": ["offset", "clamp_min"], "grids": {"offset": [0.1], "clamp_min": [0.1]}})


def test_a_model_whose_output_is_not_logits_is_refused(tmp_path, digits):
    x, y = sample(digits.x_train, digits.y_train, 300, seed=8)
    with pytest.raises(TypeError, match=r"NotLogits\(x\) returned dict; the probe needs logits \(rows, classes\)"):
        watch_only(NotLogits(seed=1), [DistanceProbe("hidden", USE_GRID, dirpath=tmp_path, model="net",
                                                     data={"train": (x, y)})], x, y)
    # the same model as a Sequential (the path that runs only the layers after the probed one)
    net = nn.Sequential(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10), nn.Unflatten(1, (10, 1)))
    with pytest.raises(TypeError, match=r"Sequential\(x\) returned Tensor\(300, 10, 1\); the probe needs logits"):
        watch_only(net, [DistanceProbe("0", USE_GRID, dirpath=tmp_path, model="net", data={"train": (x, y)})], x, y)


# ---------------------------------------------------------------- 7. the two engines agree

def trained_sequential(kind: str, digits, seed: int) -> nn.Sequential:
    """A Sequential MLP, or a conv net of nested Sequentials, trained a few SGD steps on the digits."""
    torch.manual_seed(seed)
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(784, 24), Abs(), nn.Linear(24, 10))
    elif kind == "dropout":  # the activation is not the entry after the layer: the probe is told its name
        net = nn.Sequential(nn.Linear(784, 24), nn.Dropout(0.2), nn.ReLU(), nn.Linear(24, 10))
    else:
        net = nn.Sequential(nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 5, 5, stride=2),
                                          nn.ReLU(inplace=True), nn.MaxPool2d(2)),  # in place, as torchvision's
                            nn.Sequential(nn.Flatten(), nn.Linear(5 * 6 * 6, 16), nn.ReLU(inplace=True),
                                          nn.Linear(16, 10)))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = sample(digits.x_train / 255.0, digits.y_train, 4000, seed)
    for i in list(range(0, 4000, 250)) * 2:
        opt.zero_grad()
        F.cross_entropy(net(x[i: i + 250]), y[i: i + 250]).backward()
        opt.step()
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("kind,layer,activation,seed", [("mlp", "0", None, 6), ("dropout", "0", "2", 19),
                                                        ("cnn", "0.1", None, 12), ("cnn", "1.1", None, 12)])
def test_a_sequential_gives_the_same_counts_by_both_engines(tmp_path, digits, monkeypatch, kind, layer, activation,
                                                            seed):
    net = trained_sequential(kind, digits, seed)
    x, y = digits.x_train / 255.0, digits.y_train
    data = {"train": (x, y), "test": loader(digits.x_test / 255.0, digits.y_test, 333)}  # batches of 333, then 1
    engines = {}
    real_split, real_hook = engine_mod.SplitSweep, engine_mod.HookSweep
    for engine in ("split", "hook"):
        used = []
        monkeypatch.setattr(engine_mod, "SplitSweep", lambda *a, **k: used.append("split") or real_split(*a, **k))
        monkeypatch.setattr(engine_mod, "HookSweep", lambda *a, **k: used.append("hook") or real_hook(*a, **k))
        monkeypatch.setattr(engine_mod, "FAST_PATH_BYTES", 1 << 30 if engine == "split" else 0)
        for name, grid, unit in (("use", USE_GRID, None), ("learn", LEARN_GRID, None), ("learn1", LEARN_GRID, 3)):
            perturbation = {**grid, "unit": unit}
            probe = DistanceProbe(layer, perturbation, splits=("train", "test"), data=data, model="net",
                                  activation=activation, dirpath=tmp_path / engine, filename=f"{name}.csv",
                                  chunk_rows=777, log=None)  # chunks of 777 rows: the last one shorter
            watch_only(net, [probe], x, y)
        assert set(used) == {engine}
        engines[engine] = {name: (tmp_path / engine / f"{name}.csv").read_text() for name in ("use", "learn", "learn1")}
        engines[engine]["ranges"] = (tmp_path / engine / f"use_{layer}_unit_ranges.csv").read_text()
    # every column the same bits but `change`, a mean of per-row norms whose blocks differ (rows vs batches)
    changes = {}
    for engine, files in engines.items():
        for name, body in files.items():
            rows = list(csv.DictReader(io.StringIO(body)))
            changes[engine, name] = [float(r.pop("change")) for r in rows if "change" in r]
            files[name] = rows
    assert engines["split"] == engines["hook"]
    for name in ("use", "learn", "learn1"):
        assert changes["split", name] == pytest.approx(changes["hook", name], rel=1e-6, abs=1e-9)
    ranges = read_csv(tmp_path / "split" / f"use_{layer}_unit_ranges.csv")
    assert min(float(r["min"]) for r in ranges) >= 0  # the ReLU's output, not the layer's
    accs = [r["accuracy"] for name in ("use", "learn") for r in read_csv(tmp_path / "split" / f"{name}.csv")]
    assert len(set(accs)) > 10


@pytest.mark.slow
def test_a_second_fresh_fit_into_the_same_dirpath_sweeps_its_epochs_again(tmp_path, digits):
    """Only a fit resumed from a checkpoint skips the epochs probe.csv already has; a fresh one measures them."""
    x, y = sample(digits.x_train, digits.y_train, 300, seed=5)
    for seed in (4, 9):
        fit(TinyMLP(seed=seed), [DistanceProbe("hidden", "use", every_n_epochs=1, dirpath=tmp_path, log=None)], 2,
            loader(x, y, 100))
    rows = read_csv(tmp_path / "probe.csv")
    baselines = [r for r in rows if r["kind"] == "baseline"]
    assert [r["epoch"] for r in baselines] == ["0", "1", "2", "0", "1", "2"]
    assert baselines[0]["accuracy"] != baselines[3]["accuracy"] or baselines[1]["accuracy"] != baselines[4]["accuracy"]


@pytest.mark.slow
def test_a_dmlight_run_prints_and_logs_each_sweep_during_training_as_perturbation_csv_has_it(tmp_path, capsys):
    """The progress line of each sweep during training, and the loggers' perturbation_during/* values at step =
    epoch, say what perturbation.csv holds for that epoch."""
    run_dir = tmp_path / "run"
    train(train_cfg(*COMMON, "seed=5", "logger=csv"), run_dir)
    out = capsys.readouterr().out
    rows = read_csv(run_dir / "perturbation.csv")
    logged = {}
    with open(run_dir / "csv_logs" / "metrics.csv") as f:
        for r in csv.DictReader(f):
            for key, value in r.items():
                if key.startswith("perturbation_during/") and value != "":
                    logged[(int(r["step"]), key)] = float(value)
    want = {}
    for epoch in ("0", "4", "8"):  # the sweeps during training; 10 is the final one
        at = [r for r in rows if r["epoch"] == epoch]
        base = next(float(r["accuracy"]) for r in at if r["kind"] == "baseline")
        offsets = [100 * float(r["accuracy"]) for r in at if r["kind"] == "offset"]
        line = (f"[probe hidden epoch {epoch}] train {100 * base:.1f}% unperturbed; "
                f"offset {min(offsets):.0f}-{max(offsets):.0f}% (28 points, ")
        assert line in out
        want[(int(epoch), "perturbation_during/train/baseline")] = base
        want.update({(int(epoch), f"perturbation_during/train/offset/{float(r['magnitude']):g}"): float(r["accuracy"])
                     for r in at if r["kind"] == "offset"})
    assert "[probe hidden epoch 10]" not in out
    assert logged.keys() == want.keys()
    assert all(logged[k] == pytest.approx(v, abs=1e-12) for k, v in want.items())
