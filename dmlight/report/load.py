"""Find run folders and read them into frames: complete runs, their curves, sweeps and unit counts; diverged and
incomplete runs apart. What a run folder holds, and what its summary's status means, is dmlight.runs.files'."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dmlight.runs import files as runfiles


def log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


def pct(x):
    return x * 100.0


# What produced a run's numbers (summary.json's provenance block; dmlight/runs/provenance.py); "" when a summary predates it.
PROVENANCE_COLUMNS = ["dmlight", "source", "git_commit", "git_dirty", "torch", "lightning", "python", "device",
                      "device_name", "torch_threads"]
RUN_COLUMNS = ["run", "path", "experiment", "model", "seed", "data", "preprocess", "epochs", "arch", "activation",
               "head_bias", "hidden", "lr", "variant", "site", "train_loss", "train_acc", "test_acc", "wall_time_s",
               *PROVENANCE_COLUMNS]
INCOMPLETE_COLUMNS = ["path", "reason", "experiment", "seed", "arch", "activation", "epochs_logged",
                      "last_train_acc_pct"]
DIVERGED_COLUMNS = ["path", "experiment", "model", "seed", "diverged_epoch", "diverged_loss", "variant", "lr", "hidden",
                    "data", "preprocess", "epochs", "arch", "activation", "head_bias", "site"]
KEY_COLUMNS = ["run", "experiment", "model"]
METRICS_COLUMNS = list(runfiles.METRICS_COLUMNS)
PERTURBATION_COLUMNS = KEY_COLUMNS + ["site", "kind", "magnitude", "split", "unit", "accuracy"]
SWEEP_COLUMNS = KEY_COLUMNS + ["site", "epoch", "kind", "magnitude", "split", "unit", "accuracy"]
# every layer's final sweep, with the size of each point's change and where its unit ranges were taken
LAYER_COLUMNS = KEY_COLUMNS + ["site", "layer", "kind", "magnitude", "split", "unit", "accuracy", "change", "range_of"]


@dataclass
class Runs:
    """Everything read from the run folders. Accuracies stay fractions here; tables turn them into %."""
    runs: pd.DataFrame          # one row per complete run: run, path, experiment, model, seed, train_acc, ...
    metrics: pd.DataFrame       # run, experiment, model, epoch, train_loss, train_acc, test_acc
    perturbation: pd.DataFrame  # each run's final sweep: run, experiment, model, site, kind, magnitude, split, unit,
    #                             accuracy
    units: pd.DataFrame         # run, experiment, model, layer, split, n, dead, rare
    incomplete: pd.DataFrame    # path, reason, experiment, seed, arch, activation, epochs_logged, ...
    # one row per diverged run (finished with a non-finite training loss): path, experiment, model, seed,
    # diverged_epoch, diverged_loss, ... (DIVERGED_COLUMNS); counted beside every mean, never in one
    diverged: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DIVERGED_COLUMNS))
    # every sweep (with its epoch) of the runs that also swept during training (perturbation.every_n_epochs); empty
    # when none did
    sweeps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SWEEP_COLUMNS))
    # each run's final sweep at every layer it swept (perturbation.csv is `hidden`; perturbation_<layer>.csv the others)
    layers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LAYER_COLUMNS))

    def without(self, experiments) -> "Runs":
        """The same frames without the runs of `experiments` (the papers' tables leave the study's out)."""
        return Runs(**{f: frame[~frame.experiment.isin(experiments)] if "experiment" in frame else frame
                       for f, frame in vars(self).items()})


def find_run_dirs(dirs, skip=()) -> list[Path]:
    """Run folders under `dirs`: those holding one of runfiles.RUN_FILES (config.yaml, summary.json, metrics.csv).

    Not searched: hidden folders (.hydra), `wandb` folders, folders in `skip`, and folders inside a
    run folder (its checkpoints/, lightning_logs/). A folder with only config.yaml that has runs
    below it is a container (e.g. a sweep root), not a run.

        >>> find_run_dirs(["outputs/learn_distance_metrics"])  # doctest: +SKIP
        [PosixPath('outputs/learn_distance_metrics/mnist-raw/ReLU/seed0'), ...]
    """
    skip = {Path(s).resolve() for s in skip}
    found = []
    for d in dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"report: {d} is not a folder; pass folders that hold run folders, "
                                    "e.g. python -m dmlight.report outputs/learn_distance_metrics")
        for root, subdirs, files in os.walk(d):
            root = Path(root)
            subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s != "wandb"
                                and (root / s).resolve() not in skip)
            present = set(files) & set(runfiles.RUN_FILES)
            if present:
                found.append(root)
                if present != {runfiles.CONFIG_FILE}:
                    subdirs[:] = []  # what lies below a run belongs to it
    found = sorted(set(found))
    # A config-only folder with runs below it is a container, not a run.
    return [p for p in found if not ((p / runfiles.CONFIG_FILE).exists() and not runfiles.summary_path(p).exists()
                                     and not runfiles.metrics_path(p).exists()
                                     and any(q != p and p in q.parents for q in found))]


def _config_identity(path: Path) -> dict:
    """experiment, seed, arch, activation (as text) from a run's config.yaml, for an incomplete run's row."""
    try:
        cfg = runfiles.read_config(path)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):  # half-written: the row lacks them
        return {}
    if not OmegaConf.is_dict(cfg):
        return {}
    out = {}
    for name, key in (("experiment", "experiment_name"), ("seed", "seed"), ("arch", "arch.name"),
                      ("activation", "activation.name")):
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if value is not None and not OmegaConf.is_config(value) and str(value) != "":
            out[name] = str(value)
    return out


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv as numbers (runfiles.METRICS_COLUMNS; unreadable cells NaN, rows without an epoch dropped)."""
    try:
        df = pd.DataFrame(runfiles.read_metrics(path))
    except (OSError, UnicodeDecodeError, csv.Error):
        return pd.DataFrame(columns=METRICS_COLUMNS)
    for c in METRICS_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    return df[METRICS_COLUMNS].dropna(subset=["epoch"])


def read_perturbation(path: Path) -> pd.DataFrame:
    """A run's perturbation.csv, every sweep in it: `epoch` is the number of training epochs completed when the sweep
    ran (0 = before training; NaN in files older than the column, which hold one sweep, the final one). A point
    appended more than once at the same epoch (a rerun of the sweep) counts once, the last time."""
    return read_sweep_file(runfiles.perturbation_path(path))


def read_sweep_file(file: Path, keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """Sweep rows (perturbation.csv, or a DistanceProbe's probe.csv, whose `keys` add "layer") as numbers; a point
    appended more than once at the same epoch counts once, the last time."""
    df = pd.DataFrame(runfiles.read_rows(file))
    if df.empty:
        raise ValueError(f"{file} holds no rows")
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce") if "epoch" in df else math.nan
    df["magnitude"] = pd.to_numeric(df["magnitude"], errors="coerce").round(12)  # float grids: key on 12 decimals
    df["accuracy"] = pd.to_numeric(df["accuracy"], errors="coerce")
    df["unit"] = df["unit"].fillna("").astype(str).str.strip().replace("", "all")
    df["change"] = pd.to_numeric(df["change"], errors="coerce") if "change" in df else math.nan
    df["range_of"] = df["range_of"].replace("", "activation_output") if "range_of" in df else "activation_output"
    return df.drop_duplicates([*keys, "epoch", "kind", "magnitude", "split", "unit"], keep="last")


def final_sweep(sweeps: pd.DataFrame) -> pd.DataFrame:
    """The rows of a run's last sweep (those at its largest epoch; all rows of a file without epochs): what every
    table, figure and claim of the trained network reads.

        >>> final_sweep(pd.DataFrame({"epoch": [0, 0, 400], "accuracy": [0.1, 0.2, 0.9]})).accuracy.tolist()
        [0.9]
    """
    return sweeps[sweeps.epoch == sweeps.epoch.max()] if sweeps.epoch.notna().any() else sweeps


def _failure(path: Path) -> str:
    try:
        info = runfiles.read_json(runfiles.failed_path(path))
        parts = [str(info[k]) for k in ("error", "reason", "message") if info.get(k)]
        return ": ".join(parts) or json.dumps(info)
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _incomplete_reason(path: Path) -> tuple[str | None, dict | None]:
    """(why the run does not count, or None; its summary when it counts: a finished status, runfiles.FINISHED)."""
    summary_name = runfiles.SUMMARY_FILE
    if not runfiles.summary_path(path).exists():
        if runfiles.failed_path(path).exists():
            return f"failed: {str(_failure(path))[:200]}", None
        return f"no {summary_name} (still running, crashed or failed)", None
    try:
        summary = runfiles.read_json(runfiles.summary_path(path))
    except (OSError, ValueError) as e:
        return f"{summary_name} unreadable ({e.__class__.__name__})", None
    if not isinstance(summary, dict) or summary.get("status") not in runfiles.FINISHED:
        status = summary.get("status") if isinstance(summary, dict) else None
        return f"{summary_name} status is {status!r}, not " + " or ".join(map(repr, runfiles.FINISHED)), None
    return None, summary


def _identity(s: dict) -> dict:
    """The config fields a summary carries whatever its status; `variant` is "" in summaries older than it."""
    return {"seed": s.get("seed"), "data": s.get("data"), "preprocess": s.get("preprocess"), "epochs": s.get("epochs"),
            "arch": s.get("arch"), "activation": s.get("activation"), "head_bias": s.get("head_bias"),
            "hidden": s.get("hidden"), "lr": s.get("lr"), "variant": str(s.get("variant") or ""),
            "site": s.get("perturbation_site") or "pre_activation"}


def _nonfinite_name(x: float) -> str:
    return "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"


def _divergence(s: dict, path: Path) -> tuple[float, str]:
    """(diverged_epoch, diverged_loss) of a diverged run, from its summary; what the summary lacks is read from
    metrics.csv (the first epoch whose training loss is not finite), else (NaN, "")."""
    try:
        epoch = float(int(s["diverged_epoch"]))
    except (KeyError, TypeError, ValueError):
        epoch = math.nan
    loss = str(s.get("diverged_loss") or "").strip().lower()
    if (math.isnan(epoch) or not loss) and runfiles.metrics_path(path).exists():
        m = read_metrics(path)
        bad = m[~np.isfinite(m.train_loss.to_numpy(dtype=float))]
        if len(bad):
            epoch = float(bad.epoch.iloc[0]) if math.isnan(epoch) else epoch
            loss = loss or _nonfinite_name(float(bad.train_loss.iloc[0]))
    return epoch, loss


def _incomplete_row(path: Path, why: str) -> dict:
    m = read_metrics(path) if runfiles.metrics_path(path).exists() else None
    return {"path": str(path), "reason": why, **_config_identity(path),
            "epochs_logged": int(m.epoch.max()) if m is not None and len(m) else 0,
            "last_train_acc_pct": pct(float(m.train_acc.iloc[-1])) if m is not None and len(m) else math.nan}


def _frame(rows, columns) -> pd.DataFrame:
    """Rows (dicts) or frames (to concatenate) -> one frame with exactly `columns`."""
    return pd.DataFrame(rows, columns=columns) if not rows or isinstance(rows[0], dict) else \
        pd.concat(rows, ignore_index=True).reindex(columns=columns)


def load_runs(dirs, skip=()) -> Runs:
    """Read every run folder under `dirs` (see find_run_dirs); incomplete runs go to `.incomplete` only, diverged runs
    (summary status "diverged") to `.diverged` only: not to `.runs`, `.metrics` or any mean.

        >>> data = load_runs(["outputs/use_distance_metrics"])  # doctest: +SKIP
        >>> data.runs.groupby("model").test_acc.mean()            # doctest: +SKIP
    """
    run_rows, metrics, perts, sweeps, units, incomplete, diverged, layers = [], [], [], [], [], [], [], []
    for path in find_run_dirs(dirs, skip):
        why, s = _incomplete_reason(path)
        if why:
            incomplete.append(_incomplete_row(path, why))
            continue
        model = s.get("model_name") or f"{s.get('arch', '?')}/{s.get('activation', '?')}"
        if s["status"] == runfiles.DIVERGED:  # a finished result without accuracies: listed and counted, in no mean
            epoch, loss = _divergence(s, path)
            diverged.append({"path": str(path), "experiment": str(s.get("experiment", "?")), "model": model,
                             "diverged_epoch": epoch, "diverged_loss": loss, **_identity(s)})
            continue
        run = len(run_rows)
        key = {"run": run, "experiment": str(s.get("experiment", "?")), "model": model}
        run_rows.append({**key, "path": str(path), **_identity(s),
                         **{k: float(s[k]) if s.get(k) is not None else math.nan
                            for k in ("train_loss", "train_acc", "test_acc", "wall_time_s")},
                         **{k: "" if (s.get("provenance") or {}).get(k) is None else str(s["provenance"][k])
                            for k in PROVENANCE_COLUMNS}})
        if runfiles.metrics_path(path).exists():
            metrics.append(read_metrics(path).assign(**key))
        for layer, file in runfiles.layer_result_files(path).items():  # each layer's sweep file, read once
            try:
                every = read_sweep_file(file).assign(site=run_rows[-1]["site"], **key)
            except (OSError, KeyError, ValueError, UnicodeDecodeError, csv.Error) as e:
                log(f"warning: {file} unreadable ({e}); its sweep is left out")
                continue
            final = final_sweep(every)
            layers.append(final.assign(layer=layer))
            if layer == "hidden":  # the papers' layer: the claims, tables and sweeps during training
                perts.append(final)
                if every.epoch.nunique() > 1:
                    sweeps.append(every)
        for layer, by_split in (s.get("units") or {}).items():
            for split, c in (by_split or {}).items():
                units.append({**key, "layer": layer, "split": split,
                              **{k: c.get(k, math.nan) for k in ("n", "dead", "rare")}})
    return Runs(
        runs=_frame(run_rows, RUN_COLUMNS),
        metrics=_frame(metrics, KEY_COLUMNS + METRICS_COLUMNS),
        perturbation=_frame(perts, PERTURBATION_COLUMNS),
        units=_frame(units, KEY_COLUMNS + ["layer", "split", "n", "dead", "rare"]),
        incomplete=_frame(incomplete, INCOMPLETE_COLUMNS),
        diverged=_frame(diverged, DIVERGED_COLUMNS),
        sweeps=_frame(sweeps, SWEEP_COLUMNS),
        layers=_frame(layers, LAYER_COLUMNS),
    )
