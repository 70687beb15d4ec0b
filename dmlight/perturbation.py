"""Perturbation experiments: shift a trained network's hidden layer, measure its accuracy.

USE (arXiv:2411.17932), Perturbation layer before the activation (site pre_activation).
Per hidden unit, min, max and range r = max - min of the *activation output* over the
training set; then for a magnitude p (a fraction, 0.05 = 5%):

    scale   p   s = p                                         intensity
    clip    p   c = min + p r        (upper bound, y = min(x, c))   intensity
    offset  p   s = (max - p r) / max,   t = p r              distance

The offset keeps each unit's max where it was (s max + t = max) and moves its zero point
(x = 0) to p r. A unit whose max is 0 (never active on the training set) has no max to keep
and nothing to shift by: offset leaves it as it is (s = 1, t = 0).

LEARN (arXiv:2502.02103), Perturbation layer after the activation (site post_activation):

    clamp_min  p   activations below v are raised to v      (distance-like)
    clamp_max  p   activations above v are lowered to v     (intensity-like)

with v = min + p r. For the whole layer (unit=null) min and max are the layer's, over all
units (one threshold, as the authors' code); for one unit (unit=k) they are unit k's own.

Every point is `Perturbation.set(scale, offset, lower, upper)` of dmlight.layers, so a
naive full forward gives the same numbers. The sweep is fast because the hidden Linear's
output does not depend on the perturbation: FastSweep computes it once per split, then
per point runs only the cheap tail, several points at a time, in cache-sized row chunks.

Results go next to the run: perturbation.csv (kind, magnitude, split, unit, accuracy;
appended, never rewritten; `baseline` rows are the unperturbed point with an empty
magnitude) and unit_ranges.csv (unit, min, max, range on the training set).
"""
from __future__ import annotations

import csv
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from dmlight.errors import UserError
from dmlight.layers import Abs
from dmlight.loggers import member_loggers
from dmlight.wandb_log import log_sweep

KINDS = {"scale": "pre_activation", "clip": "pre_activation", "offset": "pre_activation",
         "clamp_min": "post_activation", "clamp_max": "post_activation"}
SPLITS = ("train", "test")
COLUMNS = ("kind", "magnitude", "split", "unit", "accuracy")
RANGE_COLUMNS = ("unit", "min", "max", "range")
RESULTS_FILE, RANGES_FILE = "perturbation.csv", "unit_ranges.csv"
DEFAULT_CHUNK_ROWS, DEFAULT_POINTS_PER_PASS = 2048, 4
MAX_WORKERS = 8


class PerturbationError(UserError, ValueError):
    """A perturbation that cannot run as asked; the message says what to change."""


# ---------------------------------------------------------------- grids and config

def expand_grid(spec) -> list[float]:
    """A grid spec -> its sorted magnitudes, rounded to 12 decimals (so 5% reads 0.05).

    A spec is a list of numbers and/or segments {linspace|geomspace: [start, stop, num]}
    (optionally `endpoint: false`), as in conf/perturbation/use.yaml.

    Example:
        >>> expand_grid([{"linspace": [0, 1, 4], "endpoint": False}, 1.0, {"geomspace": [1, 100, 3]}])
        [0.0, 0.25, 0.5, 0.75, 1.0, 10.0, 100.0]
    """
    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, (int, float, dict)):
        spec = [spec]
    points: list[float] = []
    for seg in spec:
        if isinstance(seg, (int, float)) and not isinstance(seg, bool):
            points.append(float(seg))
            continue
        kinds = [k for k in ("linspace", "geomspace") if isinstance(seg, dict) and k in seg]
        if len(kinds) != 1 or len(seg[kinds[0]]) != 3:
            raise PerturbationError(
                f"bad grid segment {seg!r}; accepted: a number, or {{linspace: [start, stop, num]}} / "
                "{geomspace: [start, stop, num]} with an optional endpoint: false")
        start, stop, num = seg[kinds[0]]
        fn = np.linspace if kinds[0] == "linspace" else np.geomspace
        points.extend(fn(float(start), float(stop), int(num), endpoint=bool(seg.get("endpoint", True))).tolist())
    return sorted({round(p, 12) + 0.0 for p in points})  # + 0.0 turns -0.0 into 0.0


def _as_list(value) -> list:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def sweep_points(cfg, site: str | None = None, hidden: int | None = None) -> dict[str, list[float]]:
    """Check a `perturbation` config (against a model's site and width, when given) and
    return {kind: magnitudes}: `magnitude` (one point) or `magnitudes` (a list) when set,
    else each kind's grid.

    Example:
        >>> from dmlight.config import compose_config
        >>> cfg = compose_config(["perturbation=use"]).perturbation
        >>> {k: len(v) for k, v in sweep_points(cfg, "pre_activation").items()}
        {'scale': 100, 'clip': 100, 'offset': 125}
    """
    kinds = [str(k) for k in _as_list(cfg.get("kinds"))]
    if not kinds:
        raise PerturbationError("no perturbation kinds to run (perturbation.kinds is empty, as in "
                                "perturbation=none). Pick a grid: perturbation=use (scale, clip, offset) "
                                "or perturbation=learn (clamp_min, clamp_max).")
    for kind in kinds:
        if kind not in KINDS:
            raise PerturbationError(f"unknown perturbation kind {kind!r}; accepted: {', '.join(KINDS)}. "
                                    "Set perturbation.kinds=[...] or pick a grid (perturbation=use, learn).")
        if site is not None and KINDS[kind] != site:
            fit = [k for k, s in KINDS.items() if s == site]
            raise PerturbationError(
                f"perturbation kind {kind!r} acts at the {KINDS[kind]} site, but this model's Perturbation "
                f"layer sits at {site}. Kinds that fit it: {', '.join(fit)}"
                f" (perturbation={'use' if site == 'pre_activation' else 'learn'}); for {kind!r}, train the "
                f"model with arch.site={KINDS[kind]}.")
    for split in _as_list(cfg.get("splits", ["train"])):
        if split not in SPLITS:
            raise PerturbationError(f"unknown split {split!r} in perturbation.splits; accepted: "
                                    f"{', '.join(SPLITS)}, e.g. perturbation.splits=[train,test].")
    unit = cfg.get("unit")
    if unit is not None and (isinstance(unit, bool) or not isinstance(unit, int) or unit < 0
                             or (hidden is not None and unit >= hidden)):
        top = f"0..{hidden - 1}" if hidden else "a unit index"
        raise PerturbationError(f"perturbation.unit={unit!r} is not a unit of this layer; accepted: {top}, "
                                "or null for the whole layer.")
    one, many = cfg.get("magnitude"), cfg.get("magnitudes")
    if one is not None and many is not None:
        raise PerturbationError(f"both perturbation.magnitude={one} and perturbation.magnitudes={_as_list(many)} "
                                "are set; set only one (magnitude for a single point, magnitudes for a list).")
    override = [one] if one is not None else _as_list(many) if many is not None else None
    points = {}
    for kind in kinds:
        spec = override if override is not None else (cfg.get("grids") or {}).get(kind)
        if spec is None:
            raise PerturbationError(f"no grid for perturbation kind {kind!r}: add perturbation.grids.{kind}, "
                                    "or give perturbation.magnitudes=[...] or perturbation.magnitude=<p>.")
        try:
            points[kind] = expand_grid(spec)
        except (TypeError, ValueError) as e:
            if isinstance(e, PerturbationError):
                raise
            raise PerturbationError(f"bad magnitudes for {kind!r} ({spec!r}): {e}. Give fractions, "
                                    "e.g. perturbation.magnitudes=[0.05,0.1].") from None
        if not points[kind]:
            raise PerturbationError(f"the grid for {kind!r} is empty; give at least one magnitude.")
    return points


# ---------------------------------------------------------------- the math

@dataclass
class UnitRanges:
    """Per-unit min and max of the hidden layer's activation output on the training set."""

    min: torch.Tensor
    max: torch.Tensor

    @property
    def range(self) -> torch.Tensor:
        return self.max - self.min

    def rows(self) -> list[dict]:
        return [{"unit": k, "min": lo, "max": hi, "range": hi - lo}
                for k, (lo, hi) in enumerate(zip(self.min.tolist(), self.max.tolist()))]


def perturbation_values(kind: str, p: float, ranges: UnitRanges, unit: int | None = None) -> dict[str, torch.Tensor]:
    """The per-unit (scale, offset, lower, upper) of one point, for `Perturbation.set(**values)`.

    Computed in float64 so identity points are exact (offset 0 gives scale 1, clip 100%
    gives the max), then stored as float32 like the layer's buffers.

    Example:
        >>> r = UnitRanges(torch.tensor([0.0, 1.0]), torch.tensor([4.0, 3.0]))
        >>> perturbation_values("offset", 0.25, r)["scale"].tolist()  # (max - p r) / max
        [0.75, 0.8333333134651184]
        >>> perturbation_values("clip", 0.5, r)["upper"].tolist()  # min + p r
        [2.0, 2.0]
    """
    lo, hi = ranges.min.double().cpu(), ranges.max.double().cpu()
    r, n = hi - lo, len(lo)
    v = {"scale": torch.ones(n, dtype=torch.float64), "offset": torch.zeros(n, dtype=torch.float64),
         "lower": torch.full((n,), -math.inf, dtype=torch.float64),
         "upper": torch.full((n,), math.inf, dtype=torch.float64)}
    if kind == "scale":
        v["scale"].fill_(p)
    elif kind == "clip":
        v["upper"] = lo + p * r
    elif kind == "offset":
        active = hi != 0  # a never-active unit keeps s = 1, t = 0 (see the module docstring)
        v["scale"] = torch.where(active, (hi - p * r) / torch.where(active, hi, 1.0), 1.0)
        v["offset"] = torch.where(active, p * r, 0.0)
    elif kind in ("clamp_min", "clamp_max"):
        if unit is None:  # one threshold for the whole layer, from the layer's own min and max
            threshold = torch.full((n,), (lo.min() + p * (hi.max() - lo.min())).item(), dtype=torch.float64)
        else:
            threshold = lo + p * r
        v["lower" if kind == "clamp_min" else "upper"] = threshold
    else:
        raise PerturbationError(f"unknown perturbation kind {kind!r}; accepted: {', '.join(KINDS)}")
    if unit is not None:  # every other unit stays at identity
        identity = {"scale": 1.0, "offset": 0.0, "lower": -math.inf, "upper": math.inf}
        for name, tensor in v.items():
            keep = tensor[unit].item()
            tensor.fill_(identity[name])
            tensor[unit] = keep
    return {name: t.float() for name, t in v.items()}


def stack_values(kind: str, magnitudes, ranges: UnitRanges, unit: int | None = None) -> dict[str, torch.Tensor]:
    """perturbation_values of many magnitudes, stacked to (points, units) per name."""
    per = [perturbation_values(kind, float(p), ranges, unit) for p in magnitudes]
    return {name: torch.stack([v[name] for v in per]) for name in per[0]}


# ---------------------------------------------------------------- the fast sweep

class FastSweep:
    """Accuracy of a network under many perturbation points on one split, fast.

    The trunk (everything before the Perturbation layer) runs once; each point runs
    `clamp(h * scale + offset, lower, upper)` and the tail. Points are processed
    `points_per_pass` at a time as a (points, rows, units) block, over `chunk_rows` rows
    at a time so the block stays in cache. Only element-wise steps that are exact are
    skipped or merged, so the counts equal a full forward pass per point, bit for bit:
    multiplying by 1, adding 0 and clamping at +-inf are skipped; a ReLU after the clamp
    becomes the clamp's bound (relu(clamp(z, a, b)) == clamp(z, max(a, 0), max(b, 0)));
    and a positive scale commutes with ReLU and Abs (act(p x) == p act(x) in floating point).

    Example:
        >>> run = load_run("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")   # doctest: +SKIP
        >>> x_train, y_train, _, _ = run.data()                                            # doctest: +SKIP
        >>> fast = FastSweep(run.model, x_train, y_train)                                  # doctest: +SKIP
        >>> values = stack_values("scale", [0.5, 2.0], fast.unit_ranges())                 # doctest: +SKIP
        >>> fast.baseline(), fast.correct(**values)  # correct predictions: unperturbed, per point  # doctest: +SKIP
    """

    def __init__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, points_per_pass: int = DEFAULT_POINTS_PER_PASS,
                 workers: int | None = None):
        self.net, self.y, self.workers = net, y, workers
        self.chunk_rows, self.points_per_pass = max(1, int(chunk_rows)), max(1, int(points_per_pass))
        self.tail = list(net.tail)  # net.tail builds a new Sequential per access
        with torch.inference_mode():
            self.h = net.trunk(x)
            self.h_min, self.h_max = self.h.amin(0), self.h.amax(0)
        self.n_rows, self.n_units = self.h.shape
        # On a GPU, run each point on the whole split: the head's matrix product then has the
        # shape of a full forward pass, so cuBLAS picks the same kernel and the same bits.
        self.on_cpu = self.h.device.type == "cpu"
        if not self.on_cpu:
            self.chunk_rows, self.points_per_pass = self.n_rows, 1
        self._act_h: torch.Tensor | None = None
        self._estimate: dict[str, torch.Tensor] | None = None
        self._buffers = threading.local()  # one reusable block per worker thread
        self._lock = threading.Lock()
        self._baseline: int | None = None

    @torch.inference_mode()
    def unit_ranges(self) -> UnitRanges:
        """Per-unit min/max of the activation output (the Perturbation layer at identity)."""
        out = self.tail[0](self.h) if self.net.site == "pre_activation" else self.h
        return UnitRanges(out.amin(0), out.amax(0))

    @torch.inference_mode()
    def baseline(self) -> int:
        """Correct predictions of the unperturbed network, measured the same way as every point."""
        if self._baseline is None:
            starts = list(range(0, self.n_rows, self.chunk_rows))
            self._baseline = sum(self._map(self._baseline_chunk, starts))
        return self._baseline

    def _baseline_chunk(self, start: int) -> int:
        out = self.h[start: start + self.chunk_rows]
        for module in self.tail:
            out = module(out)
        return int((out.max(-1).indices == self.y[start: start + self.chunk_rows]).sum())

    @torch.inference_mode()
    def correct(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> list[int]:
        """Correct predictions per point; each argument is (points, units)."""
        dev = self.h.device
        scale, offset, lower, upper = (t.to(dev, torch.float32) for t in (scale, offset, lower, upper))
        # A point that changes no value on this split is the unperturbed network.
        unchanged = ((scale == 1) & (offset == 0) & (lower <= self.h_min) & (upper >= self.h_max)).all(1).tolist()
        counts = [self.baseline() if same else None for same in unchanged]
        todo = [i for i, same in enumerate(unchanged) if not same]
        if todo and self._uniform_scale_only(scale[todo], offset[todo], lower[todo], upper[todo]):
            self._estimates()
            jobs = [[i] for i in todo]
            work = lambda idx: [self._scaled_correct(scale[idx[0], 0])]  # noqa: E731
        else:
            jobs = [todo[i: i + self.points_per_pass] for i in range(0, len(todo), self.points_per_pass)]
            work = lambda idx: self._pass(scale[idx], offset[idx], lower[idx], upper[idx])  # noqa: E731
        for idx, result in zip(jobs, self._map(work, jobs)):
            for j, c in zip(idx, result):
                counts[j] = c
        return counts

    def _map(self, fn, jobs: list) -> list:
        """fn over jobs; on a multi-core CPU, one single-threaded worker per core (up to 8).

        Whole passes per core beat splitting every small op across cores: no barrier per op
        (each op is tens of microseconds), and a core taken by another process slows this
        sweep in proportion instead of stalling every op. Results are the same bits: each
        op computes every element the same way whatever the thread count.
        """
        threads = torch.get_num_threads()
        # Past a few workers the GIL (held while each op is dispatched) becomes the limit.
        workers = min(self.workers or (min(threads, MAX_WORKERS) if self.on_cpu else 1), len(jobs))
        if workers <= 1:
            return [fn(job) for job in jobs]

        def run(job):
            with torch.inference_mode():  # grad mode is per thread
                return fn(job)

        torch.set_num_threads(max(1, threads // workers))  # the workers start with it (BLAS too)
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(run, jobs))
        finally:
            torch.set_num_threads(threads)

    # -- USE's scale on a one-hidden-layer net: certified estimates, exact where it matters

    def _uniform_scale_only(self, scale, offset, lower, upper) -> bool:
        tail = self.tail
        return (self.on_cpu and len(tail) == 2 and isinstance(tail[0], (nn.ReLU, Abs))
                and isinstance(tail[1], nn.Linear) and bool((scale > 0).all()) and bool((scale == scale[:, :1]).all())
                and bool((offset == 0).all()) and bool((lower == -math.inf).all())
                and bool((upper == math.inf).all()))

    def _estimates(self) -> dict[str, torch.Tensor]:
        """What `_scaled_correct` reuses for every point: W act(h), the error scale, masks."""
        head = self.tail[1]
        if self._estimate is None:
            a_t, dev = self._activated_h().t(), self.h.device
            n_classes = len(head.weight)
            # |network - estimate| <= ((2K + 5) p S + (K + 3) |b|) u with S = |W| act(h) and K inputs:
            # the network's dot product and p's rounding, plus the estimate's own; take twice that.
            k = head.in_features + 3
            u = 2.0 ** -24  # float32 unit roundoff
            kappa = 4 * k * u / (1 - 2 * k * u)
            bias = head.bias if head.bias is not None else torch.zeros(n_classes, device=dev)
            at_y = self.y * self.n_rows + torch.arange(self.n_rows, device=dev)  # flat index of (y_i, i)
            not_y = torch.zeros(n_classes * self.n_rows, device=dev).index_fill_(0, at_y, -math.inf)
            self._estimate = {
                "dot": head.weight @ a_t, "size": (head.weight.abs() @ a_t.abs()).mul_(kappa),
                "bias": bias[:, None].expand(-1, self.n_rows).contiguous(),
                "slack": (bias.abs() * kappa + 1e-30)[:, None].expand(-1, self.n_rows).contiguous(),
                "at_y": at_y, "not_y": not_y.view(n_classes, self.n_rows)}
        return self._estimate

    def _scaled_correct(self, scale: torch.Tensor) -> int:
        """Correct predictions of `head(act(p * h))`, equal to the full forward pass's count.

        act(p h) = p act(h) exactly, so the logits are about p * (W act(h)) + b, an estimate
        that costs rows x classes. Higham's bound |fl(x.y) - x.y| <= gamma_n sum |x_i y_i|
        holds for any summation order, so the network's own float logits lie within `err` of
        the estimate: a row whose true class beats (or loses to) every other by more than
        that is decided; the few undecided rows are recomputed exactly, as `_pass` would.
        Class-major (classes, rows) layout: reductions over 10 classes vectorize across rows.
        """
        head, e, p = self.tail[1], self._estimates(), float(scale)
        logits = torch.add(e["bias"], e["dot"], alpha=p)
        err = torch.add(e["slack"], e["size"], alpha=p)
        high, low = logits + err, logits.sub_(err)
        true_high, true_low = high.take(e["at_y"]), low.take(e["at_y"])
        other_high, other_low = high.add_(e["not_y"]).amax(0), low.add_(e["not_y"]).amax(0)
        right = true_low > other_high
        undecided = (~right & (other_low <= true_high)).nonzero().squeeze(1)
        correct = int(right.sum())
        if len(undecided):
            # Pad to a few dozen rows: a one-row product may take another BLAS path (gemv).
            rows = torch.cat([undecided, torch.arange(max(0, 32 - len(undecided)), device=undecided.device)])
            pred = head(torch.mul(self._activated_h()[rows], scale)).max(-1).indices[: len(undecided)]
            correct += int((pred == self.y[undecided]).sum())
        return correct

    def _pass(self, scale, offset, lower, upper) -> list[int]:
        n_points, tail = len(scale), self.tail
        mul, add = bool((scale != 1).any()), bool((offset != 0).any())
        lo = lower if bool((lower > -math.inf).any()) else None
        hi = upper if bool((upper < math.inf).any()) else None
        src, relu_only = self.h, False
        if mul and not add and lo is None and hi is None and bool((scale > 0).all()) \
                and isinstance(tail[0], (nn.ReLU, Abs)):
            src, tail = self._activated_h(), tail[1:]  # act(p x) == p act(x) for p > 0, bit for bit
        elif isinstance(tail[0], nn.ReLU):
            tail = tail[1:]  # the ReLU becomes the clamp's lower bound
            if hi is None and (lo is None or bool((lo <= 0).all())):
                relu_only, lo = True, None
            else:
                lo = torch.zeros_like(upper) if lo is None else lo.clamp_min(0)
                hi = None if hi is None else hi.clamp_min(0)
        s, t = scale[:, None, :], offset[:, None, :]
        lo = None if lo is None else lo[:, None, :]
        hi = None if hi is None else hi[:, None, :]
        need = n_points * self.chunk_rows * self.n_units
        buffer = getattr(self._buffers, "block", None)
        if buffer is None or buffer.numel() < need:
            buffer = self._buffers.block = torch.empty(need, device=self.h.device)
        correct = torch.zeros(n_points, dtype=torch.int64, device=self.h.device)
        for start in range(0, self.n_rows, self.chunk_rows):
            x = src[start: start + self.chunk_rows]
            z = buffer[: n_points * len(x) * self.n_units].view(n_points, len(x), self.n_units)
            # The same element-wise steps, in the same order, as Perturbation.forward.
            first = True
            if mul:
                torch.mul(x, s, out=z)
                first = False
            if add:
                torch.add(x, t, out=z) if first else z.add_(t)
                first = False
            if lo is not None or hi is not None:
                torch.clamp(x, lo, hi, out=z) if first else z.clamp_(lo, hi)
                first = False
            if relu_only:
                torch.clamp_min(x, 0, out=z) if first else z.clamp_min_(0)
                first = False
            if first:
                z.copy_(x.expand_as(z))
            out = z
            for module in tail:
                out = module(out)
            correct += (out.max(-1).indices == self.y[start: start + len(x)]).sum(-1)
        return correct.tolist()

    def _activated_h(self) -> torch.Tensor:
        with self._lock:  # workers may ask at once
            if self._act_h is None:
                self._act_h = self.tail[0](self.h)
        return self._act_h


# ---------------------------------------------------------------- a whole sweep

def run_sweep(net: nn.Module, data, cfg, log=print, label: str = "") -> tuple[list[dict], UnitRanges]:
    """Run the sweep `cfg` (a `perturbation` config) on `data` (a dmlight.data.Splits).

    Returns the rows for perturbation.csv (one baseline row per split, then one per point)
    and the training-set unit ranges the points were computed from. Leaves the network in
    eval mode with its Perturbation layer at identity.

    Example:
        >>> run = load_run("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")   # doctest: +SKIP
        >>> cfg = compose_config(["perturbation=offset"]).perturbation                        # doctest: +SKIP
        >>> rows, ranges = run_sweep(run.model, load_data("mnist5k"), cfg)                     # doctest: +SKIP
    """
    points = sweep_points(cfg, net.site, net.hidden_units)
    unit = cfg.get("unit")
    splits = [str(s) for s in _as_list(cfg.get("splits", ["train"]))]
    chunk_rows = cfg.get("chunk_rows") or DEFAULT_CHUNK_ROWS
    points_per_pass = cfg.get("points_per_pass") or DEFAULT_POINTS_PER_PASS
    net.eval()
    net.perturb.reset()
    rows = []
    train = FastSweep(net, *data.split("train"), chunk_rows, points_per_pass)
    ranges = train.unit_ranges()  # always the training set's, whichever splits are measured
    for split in splits:
        fast = train if split == "train" else FastSweep(net, *data.split(split), chunk_rows, points_per_pass)
        n = fast.n_rows
        baseline = fast.baseline()
        rows.append({"kind": "baseline", "magnitude": None, "split": split, "unit": "all",
                     "accuracy": baseline / n})
        for kind, magnitudes in points.items():
            t0 = time.perf_counter()
            counts = fast.correct(**stack_values(kind, magnitudes, ranges, unit))
            accs = [c / n for c in counts]
            rows += [{"kind": kind, "magnitude": p, "split": split, "unit": "all" if unit is None else unit,
                      "accuracy": a} for p, a in zip(magnitudes, accs)]
            if log:
                where = "" if unit is None else f" unit {unit}"
                how_many = f"{len(magnitudes)} point{'s' if len(magnitudes) > 1 else ''}"
                log(f"[perturbation{' ' + label if label else ''}] {kind}{where} on {split} ({n} rows): "
                    f"{how_many} in {time.perf_counter() - t0:.2f}s, "
                    f"accuracy {100 * min(accs):.2f}%..{100 * max(accs):.2f}% "
                    f"(unperturbed {100 * baseline / n:.2f}%)")
    return rows, ranges


# ---------------------------------------------------------------- result files

def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def append_results(run_dir: str | Path, rows: list[dict]) -> Path:
    """Append rows to <run_dir>/perturbation.csv (header when new), under a file lock so
    parallel sweeps of one run never interleave. Rows already there are never rewritten."""
    path = Path(run_dir) / RESULTS_FILE
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in COLUMNS])
    with open(path, "a", newline="") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # no POSIX locks (Windows): appends still happen in one write
            pass
        if f.tell() == 0:
            f.write(",".join(COLUMNS) + "\n")
        f.write(buf.getvalue())
        f.flush()
    return path


def write_unit_ranges(run_dir: str | Path, ranges: UnitRanges) -> Path:
    """Write <run_dir>/unit_ranges.csv (unit, min, max, range), replacing it atomically."""
    path = Path(run_dir) / RANGES_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, RANGE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in ranges.rows())
    tmp.replace(path)
    return path


def read_results(run_dir: str | Path) -> list[dict]:
    """perturbation.csv as a list of dicts of strings (empty when the run has none).

    Example:
        >>> [r for r in read_results(run_dir) if r["kind"] == "baseline"]    # doctest: +SKIP
        [{'kind': 'baseline', 'magnitude': '', 'split': 'train', 'unit': 'all', 'accuracy': '0.99'}]
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the callback

class PerturbationSweep(pl.Callback):
    """Runs the configured perturbation sweep when training ends, on every member network
    (one for a solo run, one per seed for an ensemble), writing perturbation.csv and
    unit_ranges.csv into each member's run directory and, with W&B on, the sweep into the
    member's own W&B run (dmlight.wandb_log.log_sweep). A config that cannot run fails when
    training starts, not after it.
    """

    def __init__(self, run_dirs: str | Path | list, cfg):
        self.run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
        self.cfg = cfg
        if cfg.get("kinds"):  # a bad grid fails before training; perturbation=none sweeps nothing
            sweep_points(cfg)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.cfg.get("kinds"):
            sweep_points(self.cfg, pl_module.net.site, pl_module.net.hidden_units)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.cfg.get("kinds"):  # perturbation=none: nothing to sweep
            return
        data = pl_module.data
        members = pl_module.members() if hasattr(pl_module, "members") else [pl_module.net]
        own, _ = member_loggers(trainer.loggers, self.run_dirs)  # each member's own W&B run
        for net, run_dir, loggers in zip(members, self.run_dirs, own):
            net.to(data.x_train.device)  # Lightning's teardown moved the module to the CPU
            try:
                rows, ranges = run_sweep(net, data, self.cfg, label=run_dir.name if len(members) > 1 else "")
            finally:
                net.perturb.reset()
            write_unit_ranges(run_dir, ranges)
            append_results(run_dir, rows)
            log_sweep(loggers, rows)
