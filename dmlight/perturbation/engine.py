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

dmlight.perturbation.driver runs them (one driver for every caller) and gives a sweep's rows; their file (perturbation.csv, perturbation_<layer>.csv for another layer
than `hidden`) and unit_ranges.csv are dmlight.runs.files'.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from dmlight.models.layers import Abs
from dmlight.perturbation.formulas import PerturbationError, UnitRanges
from dmlight.perturbation.site import locate

DEFAULT_CHUNK_ROWS = 4096
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


class ChangeSum:
    """The size of a point's change, gathered over row blocks: the mean over rows of ||a' - a|| / ||a||, where a
    and a' are a row's unperturbed and perturbed values of what the unit ranges are measured on (the activation's
    output at a pre-activation site; the layer's output at a post-activation site), the norm over every axis but
    the row's. Rows whose ||a|| is 0 have no relative change and are left out (all of them: NaN). Each row's
    ratio is kept and summed once at the end, so the value does not depend on the blocks (chunk_rows)."""

    def __init__(self):
        self.ratios: list[torch.Tensor] = []

    def add(self, new: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None = None) -> None:
        """A block's rows: perturbed `new`, unperturbed `old` and, when known, ||old|| per row (`ref`)."""
        ref = old.flatten(1).norm(dim=1) if ref is None else ref
        keep = ref > 0
        self.ratios.append(((new - old).flatten(1).norm(dim=1)[keep] / ref[keep]).double().cpu())

    @property
    def value(self) -> float:
        every = torch.cat(self.ratios) if self.ratios else torch.zeros(0, dtype=torch.float64)
        return float(every.mean()) if len(every) else math.nan


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
        # the tail's first module is the activation the ranges (and the size of change) are measured after
        self.act_is_first = first is not None and first is ranges_of
        self._unperturbed = None  # (what the ranges are measured on, its norm per row): measure() fills it once
        self.baseline = self._count(None, None, None, None)[0]

    @torch.inference_mode()
    def unit_ranges(self, of: str = "activation_output") -> UnitRanges:
        """Per-unit min/max of what the ranges are measured on: `ranges_of` of the output (the papers' activation
        output, `of="activation_output"`; the output itself when there is no `ranges_of`), or the output where the
        perturbation acts (`of="site_output"`)."""
        own = self.ranges_of is None or of == "site_output"
        return UnitRanges(*unit_min_max(self.h if own else self.ranges_of(self.h.clone()), self.dim))

    def correct(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> list[int]:
        """Correct predictions per point; each argument is (points, units), as `stack_values` gives."""
        return [count for count, _ in self._points(scale, offset, lower, upper, False)]

    def measure(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> tuple[list[int], list[float]]:
        """Correct predictions and the size of the change (ChangeSum) per point."""
        if self._unperturbed is None:  # once, before any worker starts
            with torch.inference_mode():
                a = self.h if self.ranges_of is None else self.ranges_of(self.h.clone())
                self._unperturbed = (a, a.flatten(1).norm(dim=1))
        out = self._points(scale, offset, lower, upper, True)
        return [count for count, _ in out], [change for _, change in out]

    def _points(self, scale, offset, lower, upper, change: bool) -> list[tuple[int, float]]:
        points = list(zip(*(t.to(self.h.device, torch.float32) for t in (scale, offset, lower, upper))))
        workers = min(self.workers, len(points))
        if workers <= 1:
            return [self._point(*p, change) for p in points]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the workers' ops (BLAS too) start single-threaded
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(lambda p: self._point(*p, change), points))
        finally:
            torch.set_num_threads(threads)

    def _point(self, scale, offset, lower, upper, change: bool) -> tuple[int, float]:
        """One point's count (and size of change), without the steps that change no value (module docstring)."""
        scale = per_unit(scale, self.h, self.dim) if bool((scale != 1).any()) else None
        offset = per_unit(offset, self.h, self.dim) if bool((offset != 0).any()) else None
        if scale is None and offset is None and bool((lower <= self.h_min).all()) \
                and bool((upper >= self.h_max).all()):
            return self.baseline, 0.0  # no value of this split moves
        lower = per_unit(lower, self.h, self.dim) if bool((lower > -math.inf).any()) else None
        upper = per_unit(upper, self.h, self.dim) if bool((upper < math.inf).any()) else None
        return self._count(scale, offset, lower, upper, change)

    @torch.inference_mode()
    def _count(self, scale, offset, lower, upper, change: bool = False) -> tuple[int, float]:
        """Correct predictions of tail(clamp(h * scale + offset, lower, upper)), a step skipped where None, and
        with `change` the size of the change (else NaN)."""
        correct, size = 0, ChangeSum()
        for start in range(0, len(self.h), self.chunk_rows):
            rows = self.h[start: start + self.chunk_rows]
            z = rows if scale is None else rows * scale
            # Each step in place once z is a new tensor: the same values, less memory traffic.
            if offset is not None:
                z = z + offset if z is rows else z.add_(offset)
            if lower is not None or upper is not None:
                z = torch.clamp(z, lower, upper) if z is rows else z.clamp_(lower, upper)
            if change:
                base, ref = (t[start: start + self.chunk_rows] for t in self._unperturbed)
            if z is rows:  # a copy of h: the tail may start in place (ReLU(inplace=True))
                logits = self.tail(z.clone())
            elif self.act_is_first:  # the activation's output is both the size of change's and the tail's input
                new = self.activation_(z) if self.activation_ is not None else self.tail[0](z)
                if change:
                    size.add(new, base, ref)
                logits = self.after_activation(new)
            else:
                if change:  # before the tail runs: it may work in place
                    size.add(z if self.ranges_of is None else self.ranges_of(z.clone()), base, ref)
                logits = self.after_activation(self.activation_(z)) if self.activation_ is not None else self.tail(z)
            check_logits(logits, "Sequential")
            # max's indices follow argmax's rule (the first of equal maxima) and are faster on 10 columns
            correct += int((logits.max(1).indices == self.y[start: start + self.chunk_rows]).sum())
        return correct, size.value if change else math.nan


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
        self.ranges_of = ranges_of
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        own: list[tuple[torch.Tensor, torch.Tensor]] = []

        def watch(_, __, out):
            self.dim = unit_axis(out, unit_dim, layer)
            seen.append(unit_min_max(out if ranges_of is None else ranges_of(out.clone()), self.dim))
            own.append(unit_min_max(out, self.dim))

        self.baseline = self._count(watch)
        if not seen:
            raise PerturbationError(f"{layer!r} ({type(module).__name__}) was not called in a forward pass of "
                                    f"{type(model).__name__}, so it cannot be perturbed there: probe a module that "
                                    "forward() calls (a fused kernel may bypass its submodules).")
        self._ranges = {of: UnitRanges(torch.stack([lo for lo, _ in got]).amin(0), torch.stack([hi for _, hi in got]).amax(0))
                        for of, got in (("activation_output", seen), ("site_output", own))}

    def unit_ranges(self, of: str = "activation_output") -> UnitRanges:
        """As SplitSweep.unit_ranges, over every batch."""
        return self._ranges[of]

    def correct(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> list[int]:
        """Correct predictions per point; each argument is (points, units), as `stack_values` gives."""
        device = self.batches[0][0].device if self.batches else "cpu"
        points = zip(*(t.to(device, torch.float32) for t in (scale, offset, lower, upper)))
        return [self._count(lambda _, __, out, p=p: perturb(out, *p, self.dim)) for p in points]

    def measure(self, scale: torch.Tensor, offset: torch.Tensor, lower: torch.Tensor,
                upper: torch.Tensor) -> tuple[list[int], list[float]]:
        """Correct predictions and the size of the change (ChangeSum) per point."""
        device = self.batches[0][0].device if self.batches else "cpu"
        counts, changes = [], []
        act = self.ranges_of
        for p in zip(*(t.to(device, torch.float32) for t in (scale, offset, lower, upper))):
            size = ChangeSum()

            def hook(_, __, out, p=p, size=size):
                new = perturb(out, *p, self.dim)
                size.add(new if act is None else act(new.clone()), out if act is None else act(out.clone()))
                return new

            counts.append(self._count(hook))
            changes.append(size.value)
        return counts, changes

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
    trunk, tail, ranges_of = where.cut(net)
    return SplitSweep(trunk, tail, x, y, ranges_of, unit_dim=where.unit_dim, layer=layer, **kw)
