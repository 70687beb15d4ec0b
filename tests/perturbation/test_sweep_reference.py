"""USE's perturbation sweep recomputed from PAPERS.md's formulas alone, on train and test.

A short USE run (seed 3, 30 epochs on mnist5k) writes perturbation.csv for both splits; this
file recomputes every row from the trained weights with its own code: each unit's min/max of
the activation output over the *training* set (perturbation at identity), then per kind

    scale   s = p
    clip    c = min + p * r
    offset  s = (max - p * r) / max,  t = p * r      (r = max - min)

applied before the activation as min(s * x + t, c), and the accuracy on each split. The test
split must be perturbed with the training set's ranges, not its own.

The reference runs in float64, dmlight in float32: a row whose decision margin is within
float32 rounding of the logits (a bound is computed per row below) may go either way, so each
count is checked to lie between the reference's sure and possible counts. Such rows are rare
(asserted), so the check is an equality in all but name.
"""
import csv

import pytest
import torch
import torch.nn.functional as F

from dmlight.runs.load import load_run
from dmlight.train import train
from tests.conftest import copy_run, train_cfg

pytestmark = pytest.mark.slow  # real trainings: `make test-fast` leaves them out

MAGNITUDES = [-0.05, 0.03, 0.1, 0.5]
KINDS = ("scale", "clip", "offset")
ACTIVATION = {"relu": torch.relu, "abs": torch.abs}


@pytest.fixture(scope="module", params=sorted(ACTIVATION))
def activation_run(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(f"use_{request.param}")
    cfg = train_cfg("experiment=use_distance_metrics", "data=mnist5k", f"activation={request.param}", "seed=3",
                    "trainer.max_epochs=30", "run.checkpoint_every=30", "run.log_every=10",
                    "perturbation.splits=[train,test]",
                    f"perturbation.magnitudes=[{','.join(map(str, MAGNITUDES))}]")
    train(cfg, run_dir)
    return request.param, run_dir


# ---------------------------------------------------------------- the reference

def csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Reference:
    """The trained network's weights and data, and PAPERS.md's perturbation computed from them."""

    def __init__(self, run_dir, activation: str):
        run = load_run(run_dir)  # only for the trained weights and the data
        sd = run.model.state_dict()
        self.w1, self.b1 = sd["hidden.weight"], sd["hidden.bias"]
        self.w2, self.b2 = sd["head.weight"].double(), sd["head.bias"].double()
        self.act = ACTIVATION[activation]
        x_train, y_train, x_test, y_test = run.data()
        # The hidden Linear in float32, as torch's own linear computes it (the layer's op).
        self.h = {"train": F.linear(x_train, self.w1, self.b1), "test": F.linear(x_test, self.w1, self.b1)}
        self.y = {"train": y_train, "test": y_test}

    def ranges(self, split: str = "train", where: str = "activation") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-unit (min, max) over `split` of the activation output (or of the pre-activation)."""
        out = self.act(self.h[split]) if where == "activation" else self.h[split]
        return out.amin(0), out.amax(0)

    @staticmethod
    def values(kind: str, p: float, lo: torch.Tensor, hi: torch.Tensor):
        """(s, t, c) per unit in float64, PAPERS.md's table."""
        lo, hi = lo.double(), hi.double()
        r = hi - lo
        s, t, c = torch.ones_like(r), torch.zeros_like(r), torch.full_like(r, float("inf"))
        if kind == "scale":
            s = torch.full_like(r, p)
        elif kind == "clip":
            c = lo + p * r
        elif kind == "offset":
            # The formula divides by max. dmlight documents (dmlight/perturbation/formulas.py's docstring)
            # that a unit whose max is 0 is left as it is: s = 1, t = 0.
            never = hi == 0
            s = torch.where(never, 1.0, (hi - p * r) / torch.where(never, 1.0, hi))
            t = torch.where(never, 0.0, p * r)
        elif kind != "baseline":
            raise ValueError(kind)
        return s, t, c

    def count_bounds(self, split: str, s, t, c) -> tuple[int, int, int]:
        """(sure, possible, n): rows surely right, rows right or within rounding of it, rows."""
        h, y = self.h[split].double(), self.y[split]
        pre = s * h + t
        z = torch.minimum(pre, c)
        a = self.act(z)
        logits = a @ self.w2.T + self.b2
        # How far dmlight's float32 logits can be from these (u: float32's unit roundoff):
        # its s, t, c are these rounded to float32, s * x + t and the clip round once each
        # (exact where s = 1, t = 0), ReLU and Abs add nothing, and the head's dot product of
        # 128 terms plus the bias is within gamma = 129 u / (1 - 129 u) of sum |w a| + |b|.
        # Twice that, for safety.
        u = 2.0 ** -24
        moved = (s != 1) | (t != 0)
        e_pre = torch.where(moved, 2 * u * ((s * h).abs() + t.abs() + pre.abs()), 0.0)
        e_z = e_pre + torch.where(torch.isfinite(c), u * c.abs(), 0.0)
        gamma = 129 * u / (1 - 129 * u)
        err = e_z @ self.w2.abs().T + gamma * ((a.abs() + e_z) @ self.w2.abs().T + self.b2.abs())
        slack = 2 * 2 * err.amax(1)  # the margin is a difference of two logits
        true = logits.gather(1, y[:, None])[:, 0]
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        margin = true - other
        return int((margin > slack).sum()), int((margin >= -slack).sum()), len(y)

    def bounds(self, kind: str, p: float | None, split: str, ranges=None) -> tuple[int, int, int]:
        lo, hi = ranges if ranges is not None else self.ranges("train")
        return self.count_bounds(split, *self.values(kind, p, lo, hi))


def dmlight_counts(run_dir) -> dict[tuple, int]:
    """perturbation.csv as {(kind, magnitude or None, split): correct predictions}."""
    out = {}
    n = {"train": 4000, "test": 1000}  # mnist5k's split
    for row in csv_rows(run_dir / "perturbation.csv"):
        assert row["unit"] == "all"
        key = (row["kind"], float(row["magnitude"]) if row["magnitude"] else None, row["split"])
        assert key not in out, key
        count = float(row["accuracy"]) * n[row["split"]]
        assert count == pytest.approx(round(count), abs=1e-6)
        out[key] = round(count)
    return out


def expected_keys() -> set:
    return {(k, p, s) for s in ("train", "test") for k in KINDS for p in MAGNITUDES} | \
        {("baseline", None, s) for s in ("train", "test")}


def check_rows(ref: Reference, counts: dict) -> int:
    """Every row within the reference's bounds; returns how many rows were undecided."""
    undecided = 0
    for (kind, p, split), count in sorted(counts.items(), key=str):
        sure, possible, n = ref.bounds(kind, p, split)
        assert sure <= count <= possible, (kind, p, split, count, sure, possible)
        assert possible - sure <= n // 250, (kind, p, split, sure, possible)  # few rows near a tie (at most 3 seen)
        undecided += possible - sure
    return undecided


# ---------------------------------------------------------------- the tests

def test_unit_ranges_are_the_training_sets_activation_output_min_and_max(activation_run):
    activation, run_dir = activation_run
    ref = Reference(run_dir, activation)
    lo, hi = ref.ranges("train")
    rows = csv_rows(run_dir / "unit_ranges.csv")
    assert [int(r["unit"]) for r in rows] == list(range(128))
    # Written with repr(), so the file holds the float32 values exactly.
    assert [float(r["min"]) for r in rows] == lo.tolist()
    assert [float(r["max"]) for r in rows] == hi.tolist()
    assert [float(r["range"]) for r in rows] == (hi.double() - lo.double()).tolist()
    assert (lo >= 0).all()  # ReLU and Abs outputs: never the pre-activation's negative values
    # The test set's own ranges differ, so using them would be visible.
    test_lo, test_hi = ref.ranges("test")
    assert not torch.equal(test_hi, hi)  # (ReLU's min is 0 on both)


def test_every_row_on_train_and_test_equals_the_papers_formulas_with_training_ranges(activation_run):
    activation, run_dir = activation_run
    ref = Reference(run_dir, activation)
    counts = dmlight_counts(run_dir)
    assert set(counts) == expected_keys()
    check_rows(ref, counts)
    # The rows carry information: the perturbation changed accuracies, differently per kind.
    for split in ("train", "test"):
        assert len({counts[(k, p, split)] for k in KINDS for p in MAGNITUDES}) > 4


def test_the_reference_would_catch_ranges_from_the_test_set_or_from_the_pre_activation(activation_run):
    """The check above can fail: a sweep that took the test split's own ranges, or the
    pre-activation's (before ReLU/Abs), gives counts outside the reference's bounds."""
    activation, run_dir = activation_run
    ref = Reference(run_dir, activation)
    counts = dmlight_counts(run_dir)

    def outside(split, ranges):
        misses = []
        for kind in ("clip", "offset"):
            for p in MAGNITUDES:
                sure, possible, _ = ref.bounds(kind, p, split, ranges)
                if not sure <= counts[(kind, p, split)] <= possible:
                    misses.append((kind, p))
        return misses

    assert outside("test", ref.ranges("test")), "test-set ranges give the same counts: the check is blind"
    assert outside("train", ref.ranges("train", where="pre_activation")), "pre-activation ranges look the same"
    assert outside("test", ref.ranges("train", where="pre_activation"))


def test_units_that_never_fire_are_left_as_they_are_by_offset(activation_run, tmp_path):
    """Two units made never active (weights and bias 0: output 0 on every input): their max is
    0, where the offset formula divides by 0. Following dmlight's documented rule (s = 1,
    t = 0), the re-run sweep (python -m dmlight.perturb's function) still equals the reference."""
    from dmlight.config import compose_config
    from dmlight.perturb import perturb

    activation, run_dir = activation_run
    copy = copy_run(run_dir, tmp_path, drop=["perturbation.csv"])
    ckpt_path = copy / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    dead = [5, 77]
    ckpt["state_dict"]["net.hidden.weight"][dead] = 0.0
    ckpt["state_dict"]["net.hidden.bias"][dead] = 0.0
    torch.save(ckpt, ckpt_path)

    cfg = compose_config(["perturbation=use", "perturbation.splits=[train,test]",
                          f"perturbation.magnitudes=[{','.join(map(str, MAGNITUDES))}]"]).perturbation
    perturb(copy, cfg, device="cpu", log=None)
    ref = Reference(copy, activation)
    lo, hi = ref.ranges("train")
    assert hi[dead].tolist() == [0.0, 0.0] and (hi > 0).sum() == 126
    r = (hi - lo).double()
    assert torch.isnan((hi.double() - 0.05 * r) / hi.double())[dead].all()  # the formula alone: 0/0
    unit_rows = csv_rows(copy / "unit_ranges.csv")
    assert [float(unit_rows[k]["max"]) for k in dead] == [0.0, 0.0]
    counts = dmlight_counts(copy)
    assert set(counts) == expected_keys()
    check_rows(ref, counts)
