"""Run a perturbation grid (dmlight.perturbation.formulas) on a network at one of its layers; write the results.

Two engines count a point's correct predictions; both compute, per unit (a Linear's feature, its
output's last axis; a conv map's channel, axis 1), `clamp(out * scale + offset, lower, upper)` at the probed
module's output and give the same counts (tests/perturbation/test_probe.py):

- `SplitSweep`, when the probed module is an entry of an `nn.Sequential` (nested ones are
  flattened), as the papers' networks are: the output there does not depend on the
  perturbation, so the trunk (everything up to it) runs once per split and each point runs
  only the perturbation and the tail, `chunk_rows` rows at a time, so the blocks stay in the
  CPU's cache and memory stays bounded. On 60,000 rows that is >= 10x a full forward pass
  per point (bench/perturb_speed.py).
- `HookSweep`, for any other model: a forward hook on the module applies each point during
  a full forward pass over the split's batches.

Two shortcuts of SplitSweep change no count: steps that change no value are skipped (x * 1
and a clamp at +-inf are x; x + 0 is x but for turning -0 into +0, which compare equal),
and a point that leaves every value of the split as it was counts as the baseline.

`sweep_rows` gives a sweep's rows; their file (perturbation.csv, perturbation_<layer>.csv for another layer
than `hidden`) and unit_ranges.csv are dmlight.runs.files'.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from dmlight.models.layers import Abs
from dmlight.perturbation.formulas import (PerturbationError, UnitRanges, check_unit, stack_values, sweep_points,
                                          sweep_splits)
from dmlight.perturbation.site import ProbeSite, locate

DEFAULT_CHUNK_ROWS = 4096
FAST_PATH_BYTES = 1 << 30  # SplitSweep keeps a split's layer output; above this the hooks recompute it
MAX_WORKERS = 8  # past a few workers the GIL, held while each op is dispatched, is the limit
IN_PLACE = {nn.ReLU: torch.relu_, Abs: torch.abs_}  # activations that can run in place


def per_unit(values: torch.Tensor, like: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """(units,) values shaped to act on axis `dim` of `like`: (units,) for (n, units), (units, 1, 1) for a conv
    map's channels (dim 1), (units,) for the features of a (n, seq, units) Linear output (dim -1)."""
    shape = [1] * like.ndim
    shape[dim] = -1
    return values.view(shape)


def unit_min_max(out: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit (axis `dim`) min and max over every other axis (rows, a conv map's positions, a sequence's)."""
    if out.ndim == 2 and dim in (1, -1):
        return out.amin(0), out.amax(0)
    flat = out.movedim(dim, 0).reshape(out.shape[dim], -1)
    return flat.amin(1), flat.amax(1)


def unit_axis(out: torch.Tensor, dim: int | None, layer: str) -> int:
    """The axis of `out` that holds `layer`'s units: `dim` (dmlight.perturbation.site.unit_dim_of), or axis 1 of a
    (rows, units) output; a larger output with no known axis is an error naming the layer."""
    if dim is not None:
        if not -out.ndim <= dim < out.ndim:
            raise PerturbationError(f"unit_dim={dim} is not an axis of {layer!r}'s output, shape {tuple(out.shape)}; "
                                    f"accepted: {-out.ndim}..{out.ndim - 1}.")
        return dim
    if out.ndim == 2:
        return 1
    raise PerturbationError(f"which axis of {layer!r}'s output, shape {tuple(out.shape)}, holds its units? The probe "
                            "knows a Linear's (its features, the last axis) and a conv's (its channels, axis 1). "
                            "Pass unit_dim=, e.g. unit_dim=-1 for features last or unit_dim=1 for channels.")


def check_logits(logits, model: str) -> None:
    """Both engines count argmax over dim 1 of (rows, classes) logits; anything else is refused."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise TypeError(f"{model}(x) returned {type(logits).__name__}"
                        f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else ''}; the probe "
                        "needs logits (rows, classes)")


def perturb(out: torch.Tensor, scale, offset, lower, upper, dim: int = 1) -> torch.Tensor:
    """clamp(out * scale + offset, lower, upper) per unit (axis `dim`): USE's min(s x + t, c) and LEARN's clamps."""
    scale, offset, lower, upper = (per_unit(v, out, dim) for v in (scale, offset, lower, upper))
    return torch.clamp(out * scale + offset, min=lower, max=upper)


class SplitSweep:
    """Correct predictions on one split, unperturbed and under many points, with the trunk run once.

    `trunk` and `tail` are the network's parts before and after the probed output
    (network(x) = tail(trunk(x))); `ranges_of` turns the trunk's output into what the unit
    ranges are measured on (the activation after a pre-activation site), None for itself.

    On a CPU the points are shared among single-threaded workers, one per core (up to 8).
    torch's own threads meet at a barrier after every op, so a core taken by another process
    stalls every op; a worker per core only slows in proportion (the figures: docs/benchmarks.md).
    On a GPU each point runs on the whole split, so the head's matrix product has the shape of a
    full forward pass (same kernel, same bits).

    Example:
        >>> from dmlight.models.networks import build_model
        >>> from dmlight.perturbation.formulas import stack_values
        >>> net = build_model("mlp", "relu", head_bias=True).eval()
        >>> tail = nn.Sequential(*list(net)[1:])  # activation, head
        >>> sweep = SplitSweep(net.hidden, tail, torch.rand(50, 784), torch.randint(0, 10, (50,)), net.activation)
        >>> values = stack_values("offset", [-0.1, 0.1], sweep.unit_ranges())
        >>> counts = sweep.correct(**values)  # correct predictions per point; sweep.baseline unperturbed
        >>> len(counts), all(0 <= c <= 50 for c in counts + [sweep.baseline])
        (2, True)
    """

    def __init__(self, trunk: nn.Module, tail: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                 ranges_of=None, chunk_rows: int = DEFAULT_CHUNK_ROWS, workers: int | None = None,
                 unit_dim: int | None = 1, layer: str = "layer"):
        self.tail, self.y, self.ranges_of = tail, y, ranges_of
        with torch.inference_mode():
            self.h = trunk(x)
            self.dim = unit_axis(self.h, unit_dim, layer)
            self.h_min, self.h_max = unit_min_max(self.h, self.dim)
        self.n = len(self.y)
        self.on_cpu = self.h.device.type == "cpu"
        self.chunk_rows = max(1, int(chunk_rows)) if self.on_cpu else len(self.h)
        self.workers = workers or (min(torch.get_num_threads(), MAX_WORKERS) if self.on_cpu else 1)
        # Applied to a point's own copy of the rows, the activation runs in place (None: the head comes first).
        first = tail[0] if len(tail) else None
        self.activation_, self.after_activation = IN_PLACE.get(type(first)), tail[1:]
        self.baseline = self._count(None, None, None, None)

    @torch.inference_mode()
    def unit_ranges(self) -> UnitRanges:
        """Per-unit min/max of what the ranges are measured on (`ranges_of` of the output, or the output)."""
        return UnitRanges(*unit_min_max(self.h if self.ranges_of is None else self.ranges_of(self.h.clone()), self.dim))

    def correct(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> list[int]:
        """Correct predictions per point; each argument is (points, units), as `stack_values` gives."""
        points = list(zip(*(t.to(self.h.device, torch.float32) for t in (scale, offset, lower, upper))))
        workers = min(self.workers, len(points))
        if workers <= 1:
            return [self._point(*p) for p in points]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the workers' ops (BLAS too) start single-threaded
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(lambda p: self._point(*p), points))
        finally:
            torch.set_num_threads(threads)

    def _point(self, scale, offset, lower, upper) -> int:
        """One point's count, without the steps that change no value (see the module docstring)."""
        scale = per_unit(scale, self.h, self.dim) if bool((scale != 1).any()) else None
        offset = per_unit(offset, self.h, self.dim) if bool((offset != 0).any()) else None
        if scale is None and offset is None and bool((lower <= self.h_min).all()) \
                and bool((upper >= self.h_max).all()):
            return self.baseline  # no value of this split moves
        lower = per_unit(lower, self.h, self.dim) if bool((lower > -math.inf).any()) else None
        upper = per_unit(upper, self.h, self.dim) if bool((upper < math.inf).any()) else None
        return self._count(scale, offset, lower, upper)

    @torch.inference_mode()
    def _count(self, scale, offset, lower, upper) -> int:
        """Correct predictions of tail(clamp(h * scale + offset, lower, upper)), a step skipped where None."""
        correct = 0
        for start in range(0, len(self.h), self.chunk_rows):
            rows = self.h[start: start + self.chunk_rows]
            z = rows if scale is None else rows * scale
            # Each step in place once z is a new tensor: the same values, less memory traffic.
            if offset is not None:
                z = z + offset if z is rows else z.add_(offset)
            if lower is not None or upper is not None:
                z = torch.clamp(z, lower, upper) if z is rows else z.clamp_(lower, upper)
            if z is rows or self.activation_ is None:  # a copy of h: the tail may start in place (ReLU(inplace=True))
                logits = self.tail(z.clone() if z is rows else z)
            else:
                logits = self.after_activation(self.activation_(z))
            check_logits(logits, "Sequential")
            # max's indices follow argmax's rule (the first of equal maxima) and are faster on 10 columns
            correct += int((logits.max(1).indices == self.y[start: start + self.chunk_rows]).sum())
        return correct


class HookSweep:
    """Correct predictions on one split, unperturbed and under many points, for any model: a
    forward hook on `module` perturbs its output during a full forward pass per point.

    `batches` is a list of (x, y) on the model's device; `model(x)` must return logits
    (n, classes). `ranges_of` as in SplitSweep, applied to `module`'s output.

    Example:
        >>> from dmlight.perturbation.formulas import stack_values
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> sweep = HookSweep(model, model[0], [(torch.rand(20, 4), torch.randint(0, 2, (20,)))], model[1])
        >>> len(sweep.correct(**stack_values("scale", [0.5, 2.0], sweep.unit_ranges())))
        2
    """

    def __init__(self, model: nn.Module, module: nn.Module, batches: list, ranges_of=None,
                 unit_dim: int | None = 1, layer: str = "layer"):
        self.model, self.module, self.batches = model, module, batches
        self.n = sum(len(y) for _, y in batches)
        self.dim = unit_dim
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def watch(_, __, out):
            self.dim = unit_axis(out, unit_dim, layer)
            seen.append(unit_min_max(out if ranges_of is None else ranges_of(out.clone()), self.dim))

        self.baseline = self._count(watch)
        if not seen:
            raise PerturbationError(f"{layer!r} ({type(module).__name__}) was not called in a forward pass of "
                                    f"{type(model).__name__}, so it cannot be perturbed there: probe a module that "
                                    "forward() calls (a fused kernel may bypass its submodules).")
        self._ranges = UnitRanges(torch.stack([lo for lo, _ in seen]).amin(0),
                                  torch.stack([hi for _, hi in seen]).amax(0))

    def unit_ranges(self) -> UnitRanges:
        return self._ranges

    def correct(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> list[int]:
        """Correct predictions per point; each argument is (points, units), as `stack_values` gives."""
        device = self.batches[0][0].device if self.batches else "cpu"
        points = zip(*(t.to(device, torch.float32) for t in (scale, offset, lower, upper)))
        return [self._count(lambda _, __, out, p=p: perturb(out, *p, self.dim)) for p in points]

    @torch.inference_mode()
    def _count(self, hook) -> int:
        handle = self.module.register_forward_hook(hook)
        try:
            correct = 0
            for x, y in self.batches:
                logits = self.model(x)
                check_logits(logits, type(self.model).__name__)
                correct += int((logits.argmax(1) == y).sum())
            return correct
        finally:
            handle.remove()


def network_sweep(net: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str = "hidden", **kw) -> SplitSweep:
    """A SplitSweep of a dmlight Network at `layer`, on its own site (`net.site`).

    Example:
        >>> from dmlight.models.networks import build_model
        >>> network_sweep(build_model("mlp", "abs"), torch.rand(9, 784), torch.zeros(9, dtype=torch.long)).n
        9
    """
    where = locate(net, layer, net.site)
    trunk, tail, ranges_of = where.split(net)
    return SplitSweep(trunk, tail, x, y, ranges_of, unit_dim=where.unit_dim, layer=layer, **kw)


def sweep_rows(sweeps: dict, points: dict[str, list[float]], ranges: UnitRanges, unit: int | None = None,
               epoch: int | None = None, log=print, label: str = "") -> list[dict]:
    """The rows of perturbation.csv for `points` ({kind: magnitudes}) on each split's sweep
    ({split: SplitSweep or HookSweep}), from the training set's `ranges`: a baseline row per
    split, then one per point."""
    rows = []
    where = "all" if unit is None else unit
    for split, sweep in sweeps.items():
        n = sweep.n
        rows.append({"epoch": epoch, "kind": "baseline", "magnitude": None, "split": split, "unit": "all",
                     "accuracy": sweep.baseline / n})
        for kind, magnitudes in points.items():
            t0 = time.perf_counter()
            accs = [c / n for c in sweep.correct(**stack_values(kind, magnitudes, ranges, unit))]
            rows += [{"epoch": epoch, "kind": kind, "magnitude": p, "split": split, "unit": where,
                      "accuracy": a} for p, a in zip(magnitudes, accs)]
            if log:
                at = "" if unit is None else f" unit {unit}"
                how_many = f"{len(magnitudes)} point{'s' if len(magnitudes) > 1 else ''}"
                log(f"[perturbation{' ' + label if label else ''}] {kind}{at} on {split} ({n} rows"
                    f"{'' if epoch is None else f', epoch {epoch}'}): {how_many} in {time.perf_counter() - t0:.2f}s, "
                    f"accuracy {100 * min(accs):.2f}%..{100 * max(accs):.2f}% "
                    f"(unperturbed {100 * sweep.baseline / n:.2f}%)")
    return rows


def site_sweeps(model: nn.Module, where: ProbeSite, batches_of, splits, unit: int | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[dict, UnitRanges]:
    """The one sweep driver's set-up, for dmlight's training, dmlight.perturb and DistanceProbe alike: a
    sweep per split at `where` (dmlight.perturbation.site.locate) and the training set's unit ranges,
    after checking `unit` against them. `batches_of(split)` gives a split's (x, y) batches on the
    model's device. A Sequential split at the target runs SplitSweep (trunk once) unless the trunk's
    output would pass FAST_PATH_BYTES; any other model runs HookSweep.

    Example:
        >>> from dmlight.models.networks import build_model
        >>> from dmlight.perturbation.site import locate
        >>> net = build_model("mlp", "abs").eval()
        >>> data = {"train": [(torch.rand(9, 784), torch.zeros(9, dtype=torch.long))]}
        >>> sweeps, ranges = site_sweeps(net, locate(net, "hidden"), data.get, ["train"])
        >>> type(sweeps["train"]).__name__, len(ranges.min)
        ('SplitSweep', 128)
    """
    train = batches_of("train")
    parts = where.split(model)
    if parts is not None and train:
        with torch.inference_mode():
            out = parts[0](train[0][0][:1])
        if out.element_size() * out.numel() * sum(len(y) for _, y in train) > FAST_PATH_BYTES:
            parts = None

    def one(batches):
        if parts is not None:
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            return SplitSweep(parts[0], parts[1], x, y, parts[2], chunk_rows, unit_dim=where.unit_dim,
                              layer=where.layer)
        return HookSweep(model, model.get_submodule(where.target), batches, where.ranges_module(model),
                         unit_dim=where.unit_dim, layer=where.layer)

    first = one(train)
    ranges = first.unit_ranges()  # always the training set's, whichever splits are measured
    check_unit(unit, len(ranges.min), where.layer)
    return {split: first if split == "train" else one(batches_of(split)) for split in splits}, ranges


def run_sweep(net: nn.Module, data, cfg, log=print, label: str = "", epoch: int | None = None,
              points: dict | None = None) -> tuple[list[dict], UnitRanges]:
    """Run the sweep `cfg` (a `perturbation` config) on a dmlight Network and `data` (a
    dmlight.data.datasets.Splits), at the network's own site: the output of `cfg.layer` (default
    `hidden`), or of the activation after it at the post_activation site.

    Returns the rows for perturbation.csv (one baseline row per split, then one per point)
    and the training-set unit ranges the points were computed from. `points` replaces the
    config's grid. Leaves the network in eval mode.

    Example:
        >>> run = load_run("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")   # doctest: +SKIP
        >>> cfg = compose_config(["perturbation=offset"]).perturbation                        # doctest: +SKIP
        >>> rows, ranges = run_sweep(run.model, load_data("mnist5k"), cfg)                     # doctest: +SKIP
    """
    points = points or sweep_points(cfg, net.site, None)
    net.eval()
    where = locate(net, cfg.get("layer") or "hidden", net.site)
    sweeps, ranges = site_sweeps(net, where, lambda split: [data.split(split)], sweep_splits(cfg), cfg.get("unit"),
                                 cfg.get("chunk_rows") or DEFAULT_CHUNK_ROWS)
    return sweep_rows(sweeps, points, ranges, cfg.get("unit"), epoch, log, label), ranges
