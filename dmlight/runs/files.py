"""The files of a run directory: each one's name, columns, writer and reader, and summary.json's schema.

    config.yaml          the resolved config (written first; dmlight.runs.layout.claim_run_dir)
    metrics.csv          METRICS_COLUMNS: epoch, train_loss, train_acc, test_acc (appended as training goes)
    checkpoints/last.ckpt  the latest checkpoint (every `run.checkpoint_every` epochs, and the final one)
    perturbation.csv     PERTURBATION_COLUMNS: epoch, kind, magnitude, split, unit, accuracy, change, range_of (appended, never
                         rewritten; `baseline` rows are the unperturbed point with an empty magnitude);
                         perturbation_<layer>.csv for another layer than `hidden` (layer_files)
    unit_ranges.csv      RANGE_COLUMNS: unit, min, max, range of the probed layer on the training set
    summary.json         written last and atomically when the run finished (SUMMARY_KEYS): status "complete",
                         or "diverged" (its loss became non-finite; see dmlight.train)
    failed.json          why the last attempt failed, when it did (removed on success)
    wandb_run.json       the run's W&B id and last logged step (dmlight.tracking.wandb_logger)

A DistanceProbe on any Lightning model writes probe.csv (PROBE_COLUMNS: a `layer` column more).
Training, dmlight.perturb, the sweep report and the report all read and write them through this module;
every value goes through csv_value, so a float reads back to the same bits.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The files of a run directory (see above), and the statuses its summary.json may say.
CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.csv", "summary.json"
PERTURBATION_FILE, FAILED_FILE, RANGES_FILE = "perturbation.csv", "failed.json", "unit_ranges.csv"
WANDB_STATE_FILE = "wandb_run.json"  # the run's W&B id and last logged step (dmlight.tracking.wandb_logger)
RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE)  # a folder holding one of these is a run (or a sweep root)
COMPLETE, DIVERGED = "complete", "diverged"
FINISHED = (COMPLETE, DIVERGED)  # the statuses of a finished run (one with a summary)
METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc")
# `change`: the size of the point's change (mean relative change of the layer's output over the rows,
# dmlight.perturbation.engine.ChangeSum); `range_of`: where the unit ranges were taken (activation_output, the
# papers' choice, or site_output). Files written before these columns keep their own header (append_results).
PERTURBATION_COLUMNS = ("epoch", "kind", "magnitude", "split", "unit", "accuracy", "change", "range_of")
PROBE_COLUMNS = ("epoch", "layer", *PERTURBATION_COLUMNS[1:])  # DistanceProbe's probe.csv
RANGE_COLUMNS = ("unit", "min", "max", "range")

# summary.json: the keys every summary has, and those of each status (make_summary checks them).
SUMMARY_KEYS = {
    "run": ("status", "experiment", "model_name", "arch", "activation", "head_bias", "hidden", "perturbation_site",
            "seed", "data", "preprocess", "epochs", "lr", "variant", "ensemble_size", "provenance"),
    COMPLETE: ("train_loss", "train_acc", "test_acc", "units", "wall_time_s", "fit_time_s", "device",
               "torch_threads"),
    DIVERGED: ("diverged_epoch", "diverged_loss"),
}


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader sees the old file or the whole new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def record_failure(run_dir: Path, error: BaseException) -> None:
    """failed.json: why this attempt failed (a rerun resumes; success removes the file)."""
    if Path(run_dir).is_dir():
        write_json_atomic(Path(run_dir) / FAILED_FILE, {
            "error": type(error).__name__, "message": str(error), "time": time.time()})


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def make_summary(**fields) -> dict:
    """A summary.json's content, checked against SUMMARY_KEYS for its status: a key missing or unknown is a bug
    of the writer, caught before the file exists.

    Example:
        >>> make_summary(status="diverged", diverged_epoch=3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: summary.json (status 'diverged'): missing activation, arch, data, diverged_loss, ...
    """
    status = fields.get("status")
    if status not in FINISHED:
        raise ValueError(f"summary.json status {status!r}; accepted: {', '.join(FINISHED)}")
    expected = set(SUMMARY_KEYS["run"]) | set(SUMMARY_KEYS[status])
    missing, unknown = sorted(expected - set(fields)), sorted(set(fields) - expected)
    if missing or unknown:
        raise ValueError(f"summary.json (status {status!r}): " + "; ".join(
            f"{what} {', '.join(keys)}" for what, keys in (("missing", missing), ("unknown", unknown)) if keys))
    return dict(fields)


def write_summary(run_dir: Path, summary: dict) -> None:
    """Write summary.json (last, atomically: a run that has one is finished); `summary` from make_summary."""
    write_json_atomic(summary_path(run_dir), make_summary(**summary))


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def perturbation_path(run_dir: Path) -> Path:
    return Path(run_dir) / PERTURBATION_FILE


def failed_path(run_dir: Path) -> Path:
    return Path(run_dir) / FAILED_FILE


def read_config(run_dir: Path) -> DictConfig | None:
    """The run's resolved config.yaml, or None when there is none."""
    path = Path(run_dir) / CONFIG_FILE
    return OmegaConf.load(path) if path.is_file() else None


def status(run_dir: Path) -> str | None:
    """The summary's status ("complete" or "diverged"), or None while the run has no summary."""
    s = read_json(summary_path(run_dir))
    return s.get("status") if isinstance(s, dict) else None


def reset_run(run_dir: Path) -> None:
    """Remove what training wrote (summary, metrics, checkpoints), keeping config.yaml: a retry starts afresh."""
    run_dir = Path(run_dir)
    for name in (SUMMARY_FILE, METRICS_FILE, PERTURBATION_FILE, RANGES_FILE, FAILED_FILE, WANDB_STATE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for other_layer in (*run_dir.glob("perturbation_*.csv"), *run_dir.glob("unit_ranges_*.csv")):
        other_layer.unlink()
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()


def last_checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run's latest checkpoint, if it has one."""
    p = last_checkpoint_path(run_dir)
    return p if p.exists() else None


def csv_value(value) -> str:
    """How every run file (metrics.csv, perturbation.csv, unit_ranges.csv) writes a value: a float exactly (its
    repr reads back to the same bits), None or NaN as an empty cell.

    Example:
        >>> [csv_value(v) for v in (0.1, float("nan"), None, 3, "offset")]
        ['0.1', '', '', '3', 'offset']
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def append_metrics(run_dir: Path, first_epoch: int, rows) -> None:
    """Append (train_loss, train_acc, test_acc) rows for epochs first_epoch, first_epoch + 1, ... to metrics.csv
    (its header first when the file is new); a NaN test accuracy (not evaluated that epoch) is an empty cell."""
    path = metrics_path(run_dir)
    new_file = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new_file:
            w.writerow(METRICS_COLUMNS)
        w.writerows([epoch, *map(csv_value, row)] for epoch, row in enumerate(rows, start=first_epoch))


def read_rows(path: Path) -> list[dict]:
    """A run file's rows as dicts of strings (an empty cell is ""), [] when it does not exist."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv's rows (METRICS_COLUMNS) as dicts of strings."""
    return read_rows(metrics_path(run_dir))


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Keep metrics.csv rows up to `last_epoch` (the checkpoint a resumed run starts from)."""
    rows = [r for r in read_metrics(run_dir) if int(r["epoch"]) <= last_epoch]
    path = metrics_path(run_dir)
    tmp = path.with_name(METRICS_FILE + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, METRICS_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------- perturbation results

def layer_files(layer: str = "hidden") -> tuple[str, str]:
    """(results, unit ranges) file names of a sweep at `layer`.

    Example:
        >>> layer_files(), layer_files("hidden2")
        (('perturbation.csv', 'unit_ranges.csv'), ('perturbation_hidden2.csv', 'unit_ranges_hidden2.csv'))
    """
    if layer == "hidden":
        return PERTURBATION_FILE, RANGES_FILE
    return tuple(f"{Path(name).stem}_{layer}.csv" for name in (PERTURBATION_FILE, RANGES_FILE))


def layer_result_files(run_dir: str | Path) -> dict[str, Path]:
    """{layer: its results file} of every layer a run's sweeps covered (`hidden` first, then by name).

    Example:
        >>> layer_result_files("/nonexistent")
        {}
    """
    run_dir = Path(run_dir)
    found = {"hidden": run_dir / PERTURBATION_FILE} if (run_dir / PERTURBATION_FILE).is_file() else {}
    stem = Path(PERTURBATION_FILE).stem + "_"
    for path in sorted(run_dir.glob(f"{stem}*.csv")):
        found[path.stem[len(stem):]] = path
    return found


def append_results(run_dir: str | Path, rows: list[dict], filename: str = PERTURBATION_FILE,
                   columns: tuple[str, ...] = PERTURBATION_COLUMNS) -> Path:
    """Append rows to <run_dir>/<filename> (header `columns` when new), under a file lock so
    parallel sweeps of one run never interleave. Rows already there are never rewritten: a
    file written by an older version keeps its own columns (one without `epoch` gets rows
    without it)."""
    path = Path(run_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # no POSIX locks (Windows): appends still happen in one write
            pass
        f.seek(0)
        header = f.readline().strip()
        f.seek(0, io.SEEK_END)
        if header:
            columns = tuple(header.split(","))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if not header:
            writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_value(row.get(c)) for c in columns])
        f.write(buf.getvalue())
        f.flush()
    return path


def recorded_epochs(run_dir: str | Path, filename: str = PERTURBATION_FILE, layer: str | None = None) -> set[int]:
    """The epochs that already have sweep rows in <run_dir>/<filename>, of `layer` where the file has a
    layer column (several probes share one file): a resumed run skips them."""
    path = Path(run_dir) / filename
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if (r.get("epoch") or "").strip()
                and (layer is None or r.get("layer") in (None, layer))}


def write_unit_ranges(run_dir: str | Path, ranges, filename: str = RANGES_FILE) -> Path:
    """Write <run_dir>/unit_ranges.csv (RANGE_COLUMNS) from `ranges.rows()` (a
    dmlight.perturbation.formulas.UnitRanges), replacing it atomically."""
    path = Path(run_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, RANGE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_value(v) for k, v in row.items()} for row in ranges.rows())
    tmp.replace(path)
    return path


def read_results(run_dir: str | Path, layer: str = "hidden") -> list[dict]:
    """perturbation.csv (of `layer`'s sweeps: see layer_files) as a list of dicts of strings (empty when the
    run has none).

    Example:
        >>> [r for r in read_results(run_dir) if r["kind"] == "baseline"]    # doctest: +SKIP
        [{'kind': 'baseline', 'magnitude': '', 'split': 'train', 'unit': 'all', 'accuracy': '0.99'}]
    """
    return read_rows(Path(run_dir) / layer_files(layer)[0])

