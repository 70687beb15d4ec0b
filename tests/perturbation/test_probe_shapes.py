"""DistanceProbe on layers with more than two axes (a Linear over (batch, sequence, features), a transformer's
feed-forward), and what it says about the unit ranges it measures. References are written here from PAPERS.md's
formulas (offset: s = (max - p*r) / max, t = p*r, per unit over every row and position), with their own hooks."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlight.data.datasets import load_data
from dmlight.perturbation.formulas import PerturbationError
from dmlight.perturbation.probe import DistanceProbe, ProbeError
from tests.perturbation.test_probe import sample, watch_only

SEQ, WIDTH = 7, 112  # a digit as 7 strips of 4 pixel rows: (n, 7, 112)
OFFSETS = [-0.4, -0.07, 0.03, 0.25]


@pytest.fixture(scope="module")
def digit_rows():
    x, y = sample(*load_data("mnist5k").split("train"), 1200, seed=23)
    return x / 255.0, y


class SeqMLP(nn.Module):
    """fc1 acts on every position of a (n, 7, 112) sequence; its ReLU is a module; mean over positions; head."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.head = nn.Linear(WIDTH, 32), nn.ReLU(), nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.act(self.fc1(x.view(-1, SEQ, WIDTH))).mean(1))


class Encoder(nn.Module):
    """A transformer encoder layer over the strips; its feed-forward calls F.relu as a function."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(WIDTH, 32)
        self.encoder = nn.TransformerEncoderLayer(32, 4, dim_feedforward=24, dropout=0.1, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.view(-1, SEQ, WIDTH))).mean(1))


class Between(nn.Module):
    """Linear -> `middle` -> ReLU -> Linear on flat digit_rows, wired in forward."""

    def __init__(self, middle: nn.Module, functional: bool = False):
        super().__init__()
        self.fc1, self.middle, self.head = nn.Linear(784, 20), middle, nn.Linear(20, 10)
        self.act = None if functional else nn.ReLU()

    def forward(self, x):
        h = self.middle(self.fc1(x))
        return self.head(F.relu(h) if self.act is None else self.act(h))


def Probe(*args, **kw) -> DistanceProbe:
    """A probe of the network that tests.test_probe.watch_only wraps (as its `net`)."""
    return DistanceProbe(*args, model="net", **kw)


def trained(net: nn.Module, digit_rows, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    x, y = digit_rows
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for i in list(range(0, len(y), 200)) * 8:
        opt.zero_grad()
        F.cross_entropy(net(x[i: i + 200]), y[i: i + 200]).backward()
        opt.step()
    return net.eval()


def own_offset_accuracies(net, module, after, digit_rows, unit=None) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """Offset accuracies by a hook of this file: ranges of after(module output) per feature (last axis) over rows
    and positions, in float64; then each offset applied to the features at every position."""
    x, y = digit_rows
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(after(o).double().reshape(-1, o.shape[-1])))
    with torch.no_grad():
        net(x)
    handle.remove()
    values = torch.cat(seen)
    lo, hi = values.min(0).values, values.max(0).values
    accs = []
    for p in OFFSETS:
        r = hi - lo
        s = torch.where(hi > 0, (hi - p * r) / torch.where(hi > 0, hi, 1.0), 1.0)  # a never-active unit: scale 1
        t = p * r
        if unit is not None:
            keep = torch.arange(len(r)) != unit
            s, t = torch.where(keep, 1.0, s), torch.where(keep, 0.0, t)
        handle = module.register_forward_hook(lambda m, i, o, s=s, t=t: (o.double() * s + t).float())
        with torch.no_grad():
            accs.append(float((net(x).argmax(1) == y).double().mean()))
        handle.remove()
    return accs, lo, hi


def probe_rows(directory, stem="probe") -> dict:
    with open(directory / f"{stem}.csv") as f:
        return {float(r["magnitude"]): float(r["accuracy"]) for r in csv.DictReader(f) if r["kind"] == "offset"}


@pytest.mark.slow
@pytest.mark.parametrize("unit", [20, None])
def test_a_linear_over_a_sequence_has_its_features_as_units(digit_rows, tmp_path, unit):
    net = trained(SeqMLP(), digit_rows, seed=31)
    probe = Probe("fc1", {"kinds": ["offset"], "grids": {"offset": OFFSETS}, "unit": unit},
                          data={"train": digit_rows}, dirpath=tmp_path, log=None)
    watch_only(net, [probe], *digit_rows)
    want, lo, hi = own_offset_accuracies(net, net.fc1, torch.relu, digit_rows, unit)
    got = probe_rows(tmp_path)
    n = len(digit_rows[1])
    assert [got[p] for p in OFFSETS] == pytest.approx(want, abs=1.01 / n)  # within one row of float rounding
    assert max(want) - min(want) > 0.05 or unit is not None  # the points differ: no accident matches them all
    with open(tmp_path / "probe_fc1_unit_ranges.csv") as f:
        ranges = list(csv.DictReader(f))
    assert len(ranges) == 32
    assert [float(r["min"]) for r in ranges] == pytest.approx(lo.tolist(), abs=1e-6)
    assert [float(r["max"]) for r in ranges] == pytest.approx(hi.tolist(), abs=1e-6)


@pytest.mark.slow
def test_a_transformer_encoder_layers_linear1_with_its_functional_relu(digit_rows, tmp_path, capsys):
    net = trained(Encoder(), digit_rows, seed=47)
    probe = Probe("encoder.linear1", {"kinds": ["offset"], "grids": {"offset": OFFSETS}, "unit": 5},
                          activation_fn=torch.relu, data={"train": digit_rows}, dirpath=tmp_path)
    watch_only(net, [probe], *digit_rows)
    want, _, hi = own_offset_accuracies(net, net.encoder.linear1, torch.relu, digit_rows, unit=5)
    assert hi[5] > 0
    assert [probe_rows(tmp_path)[p] for p in OFFSETS] == pytest.approx(want, abs=1.01 / len(digit_rows[1]))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[probe encoder.linear1]")]
    assert said == ["[probe encoder.linear1] 24 units, its features (the output's last axis); unit ranges measured "
                    "on activation_fn torch.relu; perturbed at 'encoder.linear1' (pre_activation)"]
    sites = json.loads((tmp_path / "probe_sites.json").read_text())
    assert sites["encoder.linear1"] == {"site": "pre_activation", "perturbed": "encoder.linear1", "units": 24,
                                       "unit_axis": "features (the output's last axis)", "unit_dim": -1,
                                       "ranges_after": "activation_fn torch.relu"}


@pytest.mark.slow
@pytest.mark.parametrize("middle, functional, after", [
    (nn.Identity(), True, "the layer's own output"),          # F.relu in forward: nothing to find
    (nn.BatchNorm1d(20), False, "the layer's own output"),    # a BatchNorm between: not an activation
    (nn.Dropout(0.3), False, "activation module 'act'"),      # a Dropout between: identity in eval, looked past
])
def test_the_probe_says_what_the_ranges_are_measured_on(digit_rows, tmp_path, capsys, middle, functional, after):
    net = trained(Between(middle, functional), digit_rows, seed=59)
    probe = Probe("fc1", {"kinds": ["offset"], "grids": {"offset": OFFSETS}}, data={"train": digit_rows},
                          dirpath=tmp_path)
    watch_only(net, [probe], *digit_rows)
    assert json.loads((tmp_path / "probe_sites.json").read_text())["fc1"]["ranges_after"] == after
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[probe fc1]"))
    assert f"unit ranges measured on {after}" in line
    assert ("name one, activation=..., or pass activation_fn=" in line) == after.startswith("the layer's")
    # the ranges really are what it says: of the layer's output, or after ReLU
    with open(tmp_path / "probe_fc1_unit_ranges.csv") as f:
        lows = [float(r["min"]) for r in csv.DictReader(f)]
    x, _ = digit_rows
    with torch.no_grad():
        out = net.fc1(x)
    reference = out if after.startswith("the layer's") else torch.relu(out)
    assert lows == pytest.approx(reference.min(0).values.tolist(), abs=1e-6)


def test_activation_fn_gives_ranges_after_it(digit_rows, tmp_path):
    net = Between(nn.Identity(), functional=True).eval()
    probe = Probe("fc1", {"kinds": ["offset"], "grids": {"offset": [0.1]}}, activation_fn=torch.relu,
                          data={"train": digit_rows}, dirpath=tmp_path, log=None)
    watch_only(net, [probe], *digit_rows)
    with open(tmp_path / "probe_fc1_unit_ranges.csv") as f:
        lows = [float(r["min"]) for r in csv.DictReader(f)]
    with torch.no_grad():
        assert lows == pytest.approx(torch.relu(net.fc1(digit_rows[0])).min(0).values.tolist(), abs=1e-6)
    assert min(lows) >= 0


def test_an_unknown_module_with_more_axes_needs_unit_dim(digit_rows, tmp_path):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = SeqMLP()
            self.gate = nn.Tanh()  # probed: not a Linear, not a conv; its output is (n, 7, 32)

        def forward(self, x):
            h = self.gate(self.inner.fc1(x.view(-1, SEQ, WIDTH)))
            return self.inner.head(h.mean(1))

    grid = {"kinds": ["offset"], "grids": {"offset": [0.1]}}
    with pytest.raises(PerturbationError, match=r"which axis of 'gate'.s output, shape \(8, 7, 32\).*unit_dim="):
        watch_only(Wrap().eval(), [Probe("gate", grid, data={"train": (digit_rows[0][:8], digit_rows[1][:8])},
                                                 dirpath=tmp_path, log=None)], *digit_rows)
    probe = Probe("gate", {**grid, "unit": 31}, unit_dim=-1, data={"train": digit_rows}, dirpath=tmp_path,
                          log=None)
    watch_only(Wrap().eval(), [probe], *digit_rows)  # 32 units on the last axis: unit 31 exists
    assert len(probe_rows(tmp_path)) == 1


def test_activation_fn_is_checked(digit_rows):
    with pytest.raises(ProbeError, match="activation_fn='relu': pass a callable"):
        watch_only(SeqMLP().eval(), [Probe("fc1", "use", activation_fn="relu", log=None)], *digit_rows)
    with pytest.raises(ProbeError, match="make the activation a module"):
        watch_only(SeqMLP().eval(), [Probe("fc1", "learn", activation_fn=torch.relu, log=None)], *digit_rows)
