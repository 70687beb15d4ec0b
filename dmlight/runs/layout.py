"""Run directories, torch-free: where a run lives, what it holds, and how a rerun picks it up.

    <paths.output_dir>/<experiment>/<data>-<preprocess>/<model>[/<variant>]/seed<s>

`variant` names the overrides that change a run's results and that the path does not already
spell out (e.g. `optimizer.lr=0.0022`), so every point of a sweep over any key gets its own
directory and the default config keeps its short path. A net of several hidden layers has its
widths in its model name (`ReLU_128x128`, see dmlight.models.grid.paper_name), so `arch.hidden=[128,128]`
names no variant; one layer's width does, in one spelling (`arch.hidden=[64]` is `arch.hidden=64`).
An ensemble (`seeds=[...]`) runs in `.../<model>[/<variant>]/ensemble-seeds<first>-<last>-n<k>`
and puts each member where its solo run lives, beside it (`.../seed<s>`). Given a directory of your
own (`hydra.run.dir=D`, or `train(cfg, D)`), an ensemble puts its members inside it, in `D/seed<s>`.

A run directory holds
    config.yaml          the resolved config (written first)
    metrics.csv          epoch, train_loss, train_acc, test_acc (appended as training goes)
    checkpoints/last.ckpt  the latest checkpoint (every `run.checkpoint_every` epochs, and the final one)
    perturbation.csv     the perturbation sweep, when one ran (perturbation_<layer>.csv: one of another
                         layer than `hidden`, see dmlight.perturbation.engine.layer_files)
    summary.json         written last and atomically when the run finished: status "complete", or
                         "diverged" (its loss became non-finite; see dmlight.train)
    failed.json          why the last attempt failed, when it did (removed on success)
Train, perturb, the sweep report and the report all read them through this module.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import math
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dmlight.errors import UserError

# Overrides the path spells out already (or that pick the path itself).
IN_PATH = {"experiment", "experiment_name", "data", "data.name", "data.preprocess", "arch", "arch.name",
           "arch.head_bias", "activation", "activation.name", "seed", "seeds", "variant"}
# Overrides that change no result file: where and how a run is written, logged and placed on a device.
NEUTRAL = {"logger", "trainer", "trainer.accelerator", "trainer.devices", "data.data_dir", "data.download",
           "data.download_timeout"}
NEUTRAL_PREFIXES = ("paths.", "run.", "logger.", "hydra.", "hydra/")
MAX_VARIANT = 120  # longer names end in a hash: file systems cap a name at 255 bytes


def variant_name(overrides) -> str:
    """The directory level for a list of command-line overrides ('' when none changes results).

    Example:
        >>> variant_name(["seed=3", "optimizer.lr=0.0022", "trainer.max_epochs=100", "run.progress_every=0"])
        'optimizer.lr=0.0022,trainer.max_epochs=100'
    """
    parts = []
    for override in overrides or ():
        key, _, value = str(override).lstrip("+~").partition("=")
        if key in IN_PATH or key in NEUTRAL or key.startswith(NEUTRAL_PREFIXES):
            continue
        if key == "arch.hidden":
            value = _hidden_value(value)
            if value is None:
                continue
        parts.append(f"{key}={value}".replace("/", "-"))
    name = ",".join(sorted(parts))
    if len(name) > MAX_VARIANT:
        name = f"{name[:MAX_VARIANT - 13]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def _hidden_value(value: str) -> str | None:
    """An `arch.hidden` override's value in one spelling ('[64]' and ' 64' give '64'); None for several
    layers (the model name spells those out). A value that is no width list is kept as typed (the
    config check then names it)."""
    text = value.strip()
    items = text[1:-1].split(",") if text.startswith("[") and text.endswith("]") else [text]
    try:
        widths = [int(item) for item in items]
    except ValueError:
        return value
    return None if len(widths) > 1 else str(widths[0])


def seed_dir_name(seed, seeds=None) -> str:
    """`seed<s>` for a solo run; an ensemble's own directory for `seeds`."""
    if seeds is None:
        return f"seed{int(seed)}"
    seeds = [int(s) for s in seeds]
    return f"ensemble-seeds{seeds[0]}-{seeds[-1]}-n{len(seeds)}"


def run_subdir(data: str, preprocess: str, model: str, variant: str, seed, seeds=None) -> str:
    """The run's path below `<output_dir>/<experiment>/`.

    Example:
        >>> run_subdir("mnist5k", "raw", "ReLU", "", 3), run_subdir("mnist", "raw", "Abs", "optimizer=adam", 0, [0, 1])
        ('mnist5k-raw/ReLU/seed3', 'mnist-raw/Abs/optimizer=adam/ensemble-seeds0-1-n2')
    """
    parts = [f"{data}-{preprocess}", model, *([variant] if variant else []), seed_dir_name(seed, seeds)]
    return "/".join(parts)


def run_dir(cfg) -> Path:
    """The directory dmlight gives the run a composed config describes (without a Hydra override of it)."""
    return Path(cfg.paths.output_dir) / cfg.experiment_name / cfg.run_subdir


def member_dirs(job_dir: str | Path, seeds) -> dict[int, Path]:
    """Each ensemble member's run directory, for an ensemble job running in `job_dir`.

    Example:
        >>> member_dirs("out/e/mnist5k-raw/ReLU/ensemble-seeds3-7-n2", [3, 7])[7].as_posix()
        'out/e/mnist5k-raw/ReLU/seed7'
        >>> member_dirs("runs/x", [3, 7])[3].as_posix()
        'runs/x/seed3'
    """
    job_dir, seeds = Path(job_dir), [int(s) for s in seeds]
    home = job_dir.parent if job_dir.name == seed_dir_name(None, seeds) else job_dir
    return {s: home / seed_dir_name(s) for s in seeds}


# The files of a run directory (see above), and the statuses its summary.json may say.
CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.csv", "summary.json"
PERTURBATION_FILE, FAILED_FILE, RANGES_FILE = "perturbation.csv", "failed.json", "unit_ranges.csv"
WANDB_STATE_FILE = "wandb_run.json"  # the run's W&B id and last logged step (dmlight.tracking.wandb_logger)
RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE)  # a folder holding one of these is a run (or a sweep root)
COMPLETE, DIVERGED = "complete", "diverged"
FINISHED = (COMPLETE, DIVERGED)  # the statuses of a finished run (one with a summary)
METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc")
# Config keys that decide a run's numbers; two configs that agree on these are the same run.
IDENTITY_KEYS = ("experiment_name", "seed", "data.name", "data.preprocess", "data.batch_size",
                 "data.shuffle_seed", "data.n_train", "data.n_test", "arch", "activation", "optimizer",
                 "trainer.max_epochs")


class RunDirConflict(UserError, RuntimeError):
    """The run directory holds a run made with another config."""


class RunDirBusy(UserError, RuntimeError):
    """Another live process holds the run directory's lock."""




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


def identity(cfg: DictConfig) -> dict:
    """The part of a config that decides the numbers (see IDENTITY_KEYS)."""
    out = {}
    for key in IDENTITY_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if out["data.batch_size"] is None:  # full batch: no order to shuffle
        out["data.shuffle_seed"] = None
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def claim_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Make sure `run_dir` is this config's: new, or holding the same run. Writes config.yaml.

    A directory holding another config's run raises RunDirConflict naming the keys that differ.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        old = _flatten(identity(OmegaConf.load(saved)))
        new = _flatten(identity(cfg))
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:5])
            raise RunDirConflict(
                f"{run_dir} holds a run with another config ({shown}). Refusing to mix results: "
                "choose another directory (hydra.run.dir=... or experiment_name=...) or delete that one.")
    OmegaConf.save(cfg, saved, resolve=True)


def record_failure(run_dir: Path, error: BaseException) -> None:
    """failed.json: why this attempt failed (a rerun resumes; success removes the file)."""
    if Path(run_dir).is_dir():
        write_json_atomic(Path(run_dir) / FAILED_FILE, {
            "error": type(error).__name__, "message": str(error), "time": time.time()})


class RunLock:
    """An exclusive lock on a run directory for as long as a job writes it.

    flock is released by the kernel when the holder dies, so a killed job never leaves a
    stale lock behind. Example:
        >>> with RunLock(Path("/tmp/some_run")):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirBusy(f"{self.path.parent} is being written by {holder}. Two jobs must not "
                             "write one run: wait for it, or kill it and rerun to resume.") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


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


def read_metrics(run_dir: Path) -> list[dict]:
    path = metrics_path(run_dir)
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


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
