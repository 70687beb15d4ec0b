"""Run a perturbation grid (dmlight.perturbation) on a trained network; write its results.

The hidden Linear's output does not depend on the perturbation, so `SplitSweep` computes
the trunk (everything before the Perturbation layer) once per split; each point then runs
only the perturbation and the tail, `chunk_rows` rows at a time, so the blocks stay in the
CPU's cache and memory stays bounded. On 60,000 rows that is >= 10x a full forward pass per
point (bench/perturb_speed.py).

Each point computes what the network's own Perturbation layer computes, on the same trunk
output, so its count equals a full forward pass's (tests/test_perturbation.py checks every
kind against one). Two shortcuts change no count: steps that change no value are skipped
(x * 1 and a clamp at +-inf are x; x + 0 is x but for turning -0 into +0, which compare
equal), and a point that leaves every value of the split as it was counts as the baseline.

Results go next to the run: perturbation.csv (kind, magnitude, split, unit, accuracy;
appended, never rewritten; `baseline` rows are the unperturbed point with an empty
magnitude) and unit_ranges.csv (unit, min, max, range on the training set).
"""
from __future__ import annotations

import csv
import io
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from dmlight.layers import Abs
from dmlight.perturbation import UnitRanges, stack_values, sweep_points, sweep_splits

COLUMNS = ("kind", "magnitude", "split", "unit", "accuracy")
RANGE_COLUMNS = ("unit", "min", "max", "range")
RESULTS_FILE, RANGES_FILE = "perturbation.csv", "unit_ranges.csv"
DEFAULT_CHUNK_ROWS = 4096
MAX_WORKERS = 8  # past a few workers the GIL, held while each op is dispatched, is the limit
IN_PLACE = {nn.ReLU: torch.relu_, Abs: torch.abs_}  # activations that can run in place


class SplitSweep:
    """Correct predictions of a network on one split, unperturbed and under many points.

    On a CPU the points are shared among single-threaded workers, one per core (up to 8).
    torch's own threads meet at a barrier after every op, so a core taken by another process
    stalls every op; a worker per core only slows in proportion. Measured on a 2-core machine,
    USE grid on 60,000 rows, ms per point: one thread 9; torch's 2 threads 4.8 idle but
    16-560 beside another torch process (a full forward pass: 190-220); 2 workers 5.0 idle,
    10-12.5 beside it. On a GPU each point runs on the whole split, so the head's matrix
    product has the shape of a full forward pass (same kernel, same bits).

    Example:
        >>> from dmlight.models import build_model
        >>> from dmlight.perturbation import stack_values
        >>> net = build_model("mlp", "relu", head_bias=True).eval()
        >>> sweep = SplitSweep(net, torch.rand(50, 784), torch.randint(0, 10, (50,)))
        >>> values = stack_values("offset", [-0.1, 0.1], sweep.unit_ranges())
        >>> counts = sweep.correct(**values)  # correct predictions per point; sweep.baseline unperturbed
        >>> len(counts), all(0 <= c <= 50 for c in counts + [sweep.baseline])
        (2, True)
    """

    def __init__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, workers: int | None = None):
        self.tail, self.y = net.tail, y  # net.tail builds a new Sequential per access
        with torch.inference_mode():
            self.h = net.trunk(x)
            self.h_min, self.h_max = self.h.amin(0), self.h.amax(0)
        self.on_cpu = self.h.device.type == "cpu"
        self.chunk_rows = max(1, int(chunk_rows)) if self.on_cpu else len(self.h)
        self.workers = workers or (min(torch.get_num_threads(), MAX_WORKERS) if self.on_cpu else 1)
        self.site = net.site
        # Applied to a point's own copy of the rows, the activation runs in place (None: the head comes first).
        self.activation_, self.after_activation = IN_PLACE.get(type(self.tail[0])), self.tail[1:]
        self.baseline = self._count(None, None, None, None)

    @torch.inference_mode()
    def unit_ranges(self) -> UnitRanges:
        """Per-unit min/max of the activation output (the Perturbation layer at identity)."""
        out = self.tail[0](self.h) if self.site == "pre_activation" else self.h
        return UnitRanges(out.amin(0), out.amax(0))

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
        scale = scale if bool((scale != 1).any()) else None
        offset = offset if bool((offset != 0).any()) else None
        if scale is None and offset is None and bool((lower <= self.h_min).all()) \
                and bool((upper >= self.h_max).all()):
            return self.baseline  # no value of this split moves
        lower = lower if bool((lower > -math.inf).any()) else None
        upper = upper if bool((upper < math.inf).any()) else None
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
            if z is rows or self.activation_ is None:
                logits = self.tail(z)
            else:
                logits = self.after_activation(self.activation_(z))
            # max's indices follow argmax's rule (the first of equal maxima) and are faster on 10 columns
            correct += int((logits.max(1).indices == self.y[start: start + self.chunk_rows]).sum())
        return correct


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
    chunk_rows = cfg.get("chunk_rows") or DEFAULT_CHUNK_ROWS
    net.eval()
    net.perturb.reset()
    rows = []
    train = SplitSweep(net, *data.split("train"), chunk_rows)
    ranges = train.unit_ranges()  # always the training set's, whichever splits are measured
    for split in sweep_splits(cfg):
        sweep = train if split == "train" else SplitSweep(net, *data.split(split), chunk_rows)
        n = len(sweep.y)
        rows.append({"kind": "baseline", "magnitude": None, "split": split, "unit": "all",
                     "accuracy": sweep.baseline / n})
        for kind, magnitudes in points.items():
            t0 = time.perf_counter()
            accs = [c / n for c in sweep.correct(**stack_values(kind, magnitudes, ranges, unit))]
            rows += [{"kind": kind, "magnitude": p, "split": split, "unit": "all" if unit is None else unit,
                      "accuracy": a} for p, a in zip(magnitudes, accs)]
            if log:
                where = "" if unit is None else f" unit {unit}"
                how_many = f"{len(magnitudes)} point{'s' if len(magnitudes) > 1 else ''}"
                log(f"[perturbation{' ' + label if label else ''}] {kind}{where} on {split} ({n} rows): "
                    f"{how_many} in {time.perf_counter() - t0:.2f}s, "
                    f"accuracy {100 * min(accs):.2f}%..{100 * max(accs):.2f}% "
                    f"(unperturbed {100 * sweep.baseline / n:.2f}%)")
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
