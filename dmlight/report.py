"""Turn folders of runs into the papers' tables and figures, and a claim-by-claim scorecard.

    python -m dmlight.report outputs/use_distance_metrics outputs/learn_distance_metrics \\
        [report.out=reports/all] [report.wandb=true] [report.pairs=ReLU:Abs,ReLU2:ReLU] [report.keep_pp=0.3]

or from Python: ``build_report(["outputs/learn_distance_metrics"])`` (returns the report folder).

Input: every run folder under the given folders (a folder holding config.yaml, summary.json or
metrics.csv; hidden folders such as .hydra, wandb folders and the report's own folder are not
searched). A run's summary.json status decides what it is:
    "complete"   its accuracies enter the tables and the scorecard;
    "diverged"   its training loss became non-finite (summary: diverged_epoch, the first such epoch, 1-based, and
                 diverged_loss, "nan", "inf" or "-inf"; no accuracies). A finished result, not an incomplete run:
                 listed in tables/diverged_runs.csv, counted per model ("2 of 20 diverged at epochs 39-70") in
                 tables/diverged.csv, in the baseline, LEARN and pairwise tables and in the evidence of every claim
                 that uses the model, and in no mean, curve or test: means are over the complete runs only;
    anything else, or no summary.json: incomplete, listed in report.md and tables/incomplete_runs.csv and counted
                 nowhere else.
Summaries older than the `variant` field (the config overrides that set a run apart, "" for the default config)
read as variant "". A group (experiment, model) whose runs mix variants, learning rates or hidden widths, or data,
preprocessing or epochs, is flagged with a warning at the top of report.md.
Accuracies are read as fractions and shown in percent; differences are percentage points (pp).

Output, in report/ inside the first folder (or report.out):
    report.md       one page: scorecard, every table, every figure
    scorecard.csv   paper, claim_id, claim, status, evidence, threshold
    tables/*.csv    every table as data (runs, incomplete_runs, diverged, diverged_runs, baseline, use_scale,
                    use_clip, use_offset, perturbation_curves, learn_accuracy, learn_pairs, units)
    figures/*.png and *.pdf   perturbation, clamp (when swept), test_accuracy, learning_curves_<experiment>

Scorecard. Each numbered claim of shared/PAPERS.md is a list of checks; a claim is
"replicated" when every check ran and passed, "not replicated" when a check failed,
"not run: diverged" when it could not run and a model it needs diverged on every run, and
"not run" when a model or perturbation point it needs is otherwise absent. USE claims use each run's
training-set accuracy against its own unperturbed accuracy (the paper's choice of split), from
pre-activation sweeps (the paper's site), preferring experiment use_distance_metrics. LEARN
claims use test accuracy, each model from the experiment the paper trains it in
(learn_distance_metrics, learn_bias, offset_l2), else from the one with most runs of it.

Thresholds live in THRESHOLDS (one place) and are chosen to work with few seeds and small data
(e.g. mnist5k with 3 seeds): they compare effect sizes in percentage points instead of relying
on significance tests, which 3 seeds cannot power (t-tests are still computed and shown). With
the published means every claim is replicated (the tests check this). Note that LEARN claim 1
("no significant difference") held to a t-test would fail on the paper's own table: its means
+- std imply t = 12 with 20 runs each, not the printed t = 1.14 (see the pairwise table).

    keep_pp = 0.5            "keeps baseline": mean drop from each run's own unperturbed accuracy <= 0.5 pp
                             (the paper's kept points drop <= 0.39 pp; its first lost ReLU point drops 0.55 pp)
    drop_pp = 1.0            "hurts" / Abs "drops below 99%": mean drop >= 1 pp (99% of a 99.99% baseline)
    sensitivity_ratio = 3.0  "far larger": worst drop at offset ±10% >= 3x the drop at scale 10% / clip 50%
                             (published: ReLU 8.8x, Abs 48x)
    floor_pp = 0.1           a reference std or drop below 0.1 pp counts as 0.1 pp, so ratios stay finite
    same_pp = 1.0            "do not differ" / "matches" / "near" / "gap disappears": |difference of means| <= 1 pp;
                             "worse": more than 1 pp below (published ReLU vs Abs: 0.75 pp)
    collapse_pp = 10.0       "large drop": >= 10 pp below ReLU (published 40 pp; a dead output unit costs ~10 pp)
    variance_ratio = 3.0     "high variance" / "more variable": std >= 3x the reference's std (published 12x, 113x)
    dead_output_frac = 0.2   "many dead output units": >= 20% of ReLU2's output units dead on the training set
                             (published 33%, its notes 22%)
    small_std_pp = 0.5       "small variance": std <= 0.5 pp (published OffsetL2 <= 0.14, baselines 0.17-0.22)
    beat_pp = 0.0            "beat the baselines": mean above the same-activation LEARN baseline by more than 0
    match_rel_tol = 0.25     a published perturbation point uses the nearest swept magnitude within 25% of it
                             (the authors' log grid steps by 7%); the magnitude used is shown in every table

Published numbers are in dmlight/published.py; every table shows them beside ours.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dmlight import published as pub
from dmlight.loggers import wandb_mode  # noqa: F401  (also report.wandb_mode, for callers)
from dmlight.stats import cohens_d, independent_ttest, independent_ttest_from_stats, mean_ci, mean_std, paired_ttest


@dataclass(frozen=True)
class Thresholds:
    """Every number the scorecard compares against; `why` is printed beside it in report.md."""
    keep_pp: float = field(default=0.5, metadata={"why": (
        "'keeps baseline' = mean drop from each run's own unperturbed train accuracy <= this (pp); the paper's "
        "kept points drop <= 0.39 pp, its first lost ReLU point 0.55 pp; with 3 seeds a t-test cannot show "
        "'no change'")})
    drop_pp: float = field(default=1.0, metadata={"why": (
        "'hurts' / Abs 'drops below 99%' = mean drop >= this (pp); 99% of a 99.99% baseline is a ~1 pp drop")})
    sensitivity_ratio: float = field(default=3.0, metadata={"why": (
        "'far larger' = worst drop at offset ±10% >= this x the drop at scale 10% and clip 50% "
        "(published: ReLU 8.8x, Abs 48x)")})
    floor_pp: float = field(default=0.1, metadata={"why": (
        "a reference std or drop below this counts as this (pp), so a perfect reference does not make a ratio "
        "infinite")})
    same_pp: float = field(default=1.0, metadata={"why": (
        "'do not differ' / 'matches' / 'near' / 'gap disappears' = |difference of means| <= this (pp), 'worse' = "
        "more than this below; published ReLU vs Abs differ by 0.75 pp")})
    collapse_pp: float = field(default=10.0, metadata={"why": (
        "'large drop' = at least this (pp) below ReLU; published 40 pp, and one dead output unit costs ~10 pp")})
    variance_ratio: float = field(default=3.0, metadata={"why": (
        "'high variance' / 'more variable' = std >= this x the reference model's std (published: 12x and 113x)")})
    dead_output_frac: float = field(default=0.2, metadata={"why": (
        "'many dead output units' = mean fraction of ReLU2's output units dead on the training set >= this "
        "(published 33%, the paper's notes 22%)")})
    small_std_pp: float = field(default=0.5, metadata={"why": (
        "'small variance' = std <= this (pp); published OffsetL2 stds <= 0.14, the linear-head baselines' 0.17-0.22")})
    beat_pp: float = field(default=0.0, metadata={"why": (
        "'beat the baselines' = mean test accuracy above the same-activation LEARN baseline by more than this (pp)")})
    match_rel_tol: float = field(default=0.25, metadata={"why": (
        "a published perturbation point uses the nearest swept magnitude within this relative distance "
        "(the authors' log grid steps by 7%); tables show the magnitude used")})


THRESHOLDS = Thresholds()

RUN_FILES = ("config.yaml", "summary.json", "metrics.csv")
EXPERIMENT_ORDER = ("use_distance_metrics", "learn_distance_metrics", "learn_bias", "offset_l2")
MODEL_ORDER = ("ReLU", "Abs", "ReLU2", "Abs2", "ReLU2-Neg", "Abs2-Neg",
               "ReLU-L2", "ReLU-L2-Neg", "Abs-L2", "Abs-L2-Neg")
USE_KINDS = ("scale", "clip", "offset")
SPLIT = "train"  # the USE paper measures perturbed accuracy on the training set

# Pairs compared in the LEARN pairwise table (a, b): t and d are for a - b.
_LEARN_BASE_PAIRS = (("ReLU", "Abs"), ("ReLU2", "ReLU"), ("ReLU2-Neg", "ReLU"), ("Abs2", "Abs"),
                     ("Abs2-Neg", "Abs"), ("Abs2-Neg", "Abs2"))
DEFAULT_PAIRS = (_LEARN_BASE_PAIRS
                 + tuple((a + "_Bias", b + "_Bias") for a, b in _LEARN_BASE_PAIRS)
                 + (("ReLU-L2", "ReLU"), ("ReLU-L2-Neg", "ReLU"), ("Abs-L2", "Abs"), ("Abs-L2-Neg", "Abs"),
                    ("ReLU-L2-Neg", "ReLU-L2"), ("Abs-L2-Neg", "Abs-L2")))


def _log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


def _pct(x):
    return x * 100.0


# ----------------------------------------------------------------------------- reading runs

@dataclass
class Runs:
    """Everything read from the run folders. Accuracies stay fractions here; tables turn them into %."""
    runs: pd.DataFrame          # one row per complete run: run, path, experiment, model, seed, train_acc, ...
    metrics: pd.DataFrame       # run, experiment, model, epoch, train_loss, train_acc, test_acc
    perturbation: pd.DataFrame  # run, experiment, model, site, kind, magnitude, split, unit, accuracy
    units: pd.DataFrame         # run, experiment, model, layer, split, n, dead, rare
    incomplete: pd.DataFrame    # path, reason, experiment, seed, arch, activation, epochs_logged, ...
    # one row per diverged run (finished with a non-finite training loss): path, experiment, model, seed,
    # diverged_epoch, diverged_loss, ... (DIVERGED_COLUMNS); counted beside every mean, never in one
    diverged: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DIVERGED_COLUMNS))


RUN_COLUMNS = ["run", "path", "experiment", "model", "seed", "data", "preprocess", "epochs", "arch", "activation",
               "head_bias", "hidden", "lr", "variant", "site", "train_loss", "train_acc", "test_acc", "wall_time_s"]
INCOMPLETE_COLUMNS = ["path", "reason", "experiment", "seed", "arch", "activation", "epochs_logged",
                      "last_train_acc_pct"]
DIVERGED_COLUMNS = ["path", "experiment", "model", "seed", "diverged_epoch", "diverged_loss", "variant", "lr", "hidden",
                    "data", "preprocess", "epochs", "arch", "activation", "head_bias", "site"]
FINISHED = ("complete", "diverged")  # summary.json statuses of a finished run


def find_run_dirs(dirs, skip=()) -> list[Path]:
    """Run folders under `dirs`: those holding config.yaml, summary.json or metrics.csv.

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
            present = set(files) & set(RUN_FILES)
            if present:
                found.append(root)
                if present != {"config.yaml"}:
                    subdirs[:] = []  # what lies below a run belongs to it
    found = sorted(set(found))
    # A config-only folder with runs below it is a container, not a run.
    return [p for p in found if not ((p / "config.yaml").exists() and not (p / "summary.json").exists()
                                     and not (p / "metrics.csv").exists()
                                     and any(q != p and p in q.parents for q in found))]


def _config_fields(path: Path) -> dict:
    """experiment, seed, arch, activation from a resolved config.yaml, without a YAML library (for incomplete runs)."""
    out, section = {}, None
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(r"^(\s*)([\w.]+):\s*(.*?)\s*$", line)
        if not m:
            continue
        indent, key, value = m.groups()
        if not indent:
            section = key
            if key in ("experiment_name", "seed") and value:
                out["experiment" if key == "experiment_name" else "seed"] = value
        elif section in ("arch", "activation") and key == "name" and value:
            out[section] = value
    return out


def _read_metrics(path: Path) -> pd.DataFrame:
    cols = ["epoch", "train_loss", "train_acc", "test_acc"]
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=cols)
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    return df[cols].dropna(subset=["epoch"])


def _read_perturbation(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"kind": str, "split": str, "unit": str})
    df["magnitude"] = pd.to_numeric(df["magnitude"], errors="coerce").round(12)  # float grids: key on 12 decimals
    df["accuracy"] = pd.to_numeric(df["accuracy"], errors="coerce")
    df["unit"] = df["unit"].fillna("all").str.strip()
    # The same point may be appended more than once (a rerun of the sweep): the last one counts.
    return df.drop_duplicates(["kind", "magnitude", "split", "unit"], keep="last")


def _incomplete_reason(path: Path) -> tuple[str | None, dict | None]:
    """(why the run does not count, or None; its summary when it counts: status "complete" or "diverged")."""
    s = path / "summary.json"
    if not s.exists():
        why = "no summary.json (still running, crashed or failed)"
        failed = path / "failed.json"
        if failed.exists():
            try:
                info = json.loads(failed.read_text())
                parts = [str(info[k]) for k in ("error", "reason", "message") if info.get(k)]
                detail = ": ".join(parts) or json.dumps(info)
            except (OSError, ValueError, AttributeError):
                detail = "unreadable"
            why = f"failed: {str(detail)[:200]}"
        return why, None
    try:
        summary = json.loads(s.read_text())
    except (OSError, ValueError) as e:
        return f"summary.json unreadable ({e.__class__.__name__})", None
    if not isinstance(summary, dict) or summary.get("status") not in FINISHED:
        status = summary.get("status") if isinstance(summary, dict) else None
        return f"summary.json status is {status!r}, not 'complete' or 'diverged'", None
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
    if (math.isnan(epoch) or not loss) and (path / "metrics.csv").exists():
        m = _read_metrics(path / "metrics.csv")
        bad = m[~np.isfinite(m.train_loss.to_numpy(dtype=float))]
        if len(bad):
            epoch = float(bad.epoch.iloc[0]) if math.isnan(epoch) else epoch
            loss = loss or _nonfinite_name(float(bad.train_loss.iloc[0]))
    return epoch, loss


def load_runs(dirs, skip=()) -> Runs:
    """Read every run folder under `dirs` (see find_run_dirs); incomplete runs go to `.incomplete` only, diverged runs
    (summary status "diverged") to `.diverged` only: not to `.runs`, `.metrics` or any mean.

        >>> data = load_runs(["outputs/use_distance_metrics"])  # doctest: +SKIP
        >>> data.runs.groupby("model").test_acc.mean()            # doctest: +SKIP
    """
    run_rows, metrics, perts, units, incomplete, diverged = [], [], [], [], [], []
    for path in find_run_dirs(dirs, skip):
        why, s = _incomplete_reason(path)
        if why:
            m = _read_metrics(path / "metrics.csv") if (path / "metrics.csv").exists() else None
            row = {"path": str(path), "reason": why, **_config_fields(path / "config.yaml"),
                   "epochs_logged": int(m.epoch.max()) if m is not None and len(m) else 0,
                   "last_train_acc_pct": _pct(float(m.train_acc.iloc[-1])) if m is not None and len(m) else math.nan}
            incomplete.append(row)
            continue
        model = s.get("model_name") or f"{s.get('arch', '?')}/{s.get('activation', '?')}"
        if s["status"] == "diverged":  # a finished result without accuracies: listed and counted, in no mean
            epoch, loss = _divergence(s, path)
            diverged.append({"path": str(path), "experiment": str(s.get("experiment", "?")), "model": model,
                             "diverged_epoch": epoch, "diverged_loss": loss, **_identity(s)})
            continue
        run = len(run_rows)
        key = {"run": run, "experiment": str(s.get("experiment", "?")), "model": model}
        run_rows.append({**key, "path": str(path), **_identity(s),
                         **{k: float(s[k]) if s.get(k) is not None else math.nan
                            for k in ("train_loss", "train_acc", "test_acc", "wall_time_s")}})
        if (path / "metrics.csv").exists():
            metrics.append(_read_metrics(path / "metrics.csv").assign(**key))
        if (path / "perturbation.csv").exists():
            try:
                perts.append(_read_perturbation(path / "perturbation.csv").assign(site=run_rows[-1]["site"], **key))
            except (OSError, KeyError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError) as e:
                _log(f"warning: {path / 'perturbation.csv'} unreadable ({e}); its sweep is left out")
        for layer, by_split in (s.get("units") or {}).items():
            for split, c in (by_split or {}).items():
                units.append({**key, "layer": layer, "split": split,
                              **{k: c.get(k, math.nan) for k in ("n", "dead", "rare")}})

    def frame(rows, columns):
        return pd.DataFrame(rows, columns=columns) if not rows or isinstance(rows[0], dict) else \
            pd.concat(rows, ignore_index=True).reindex(columns=columns)

    key_cols = ["run", "experiment", "model"]
    return Runs(
        runs=frame(run_rows, RUN_COLUMNS),
        metrics=frame(metrics, key_cols + ["epoch", "train_loss", "train_acc", "test_acc"]),
        perturbation=frame(perts, key_cols + ["site", "kind", "magnitude", "split", "unit", "accuracy"]),
        units=frame(units, key_cols + ["layer", "split", "n", "dead", "rare"]),
        incomplete=frame(incomplete, INCOMPLETE_COLUMNS),
        diverged=frame(diverged, DIVERGED_COLUMNS),
    )


# ----------------------------------------------------------------------------- ordering and lookups

def _model_key(model: str):
    base = model.removesuffix("_Bias")
    return (model.endswith("_Bias"), MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER), model)


def _experiment_key(experiment: str):
    return (EXPERIMENT_ORDER.index(experiment) if experiment in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER), experiment)


def _group_key(g):
    return (_experiment_key(g[0]), _model_key(g[1]))


def _home_experiment(model: str) -> str:
    """The experiment in which the papers train `model`."""
    if "-L2" in model:
        return "offset_l2"
    return "learn_bias" if model.endswith("_Bias") else "learn_distance_metrics"


def _pick(experiments_by_count: dict, prefer: str) -> str | None:
    """The preferred experiment if it has the model, else the one with the most runs of it."""
    if not experiments_by_count:
        return None
    if prefer in experiments_by_count:
        return prefer
    return max(sorted(experiments_by_count), key=lambda e: experiments_by_count[e])


def _published_baseline(experiment: str, model: str) -> dict:
    """Published train/test/loss (mean, std) for a group, and which paper they come from."""
    if model in pub.USE_BASELINE and experiment.startswith("use"):
        return {"source": "USE", **pub.USE_BASELINE[model]}
    if model in pub.LEARN_TEST:
        return {"source": "LEARN", "test": pub.LEARN_TEST[model]}
    return {"source": ""}


def _nearest(magnitudes, point: float, rel_tol: float):
    """The swept magnitude nearest to a published point, or None when none is within rel_tol of it."""
    m = np.asarray(sorted(set(float(x) for x in magnitudes if not pd.isna(x))))
    if not len(m):
        return None
    best = float(m[np.argmin(np.abs(m - point))])
    return best if abs(best - point) <= rel_tol * abs(point) + 1e-12 else None


# ----------------------------------------------------------------------------- diverged runs

def diverged_text(n_runs: int, epochs) -> str:
    """How many of a group's `n_runs` runs diverged, and at which epochs (one per diverged run, NaN when unknown);
    "" when none did.

        >>> diverged_text(20, [39, 70])
        '2 of 20 diverged at epochs 39-70'
        >>> diverged_text(5, [39.0])
        '1 of 5 diverged at epoch 39'
        >>> diverged_text(5, [])
        ''
    """
    epochs = list(epochs)
    if not epochs:
        return ""
    known = sorted(int(e) for e in epochs if not pd.isna(e))
    text = f"{len(epochs)} of {n_runs} diverged"
    if known:
        text += f" at epoch {known[0]}" if known[0] == known[-1] else f" at epochs {known[0]}-{known[-1]}"
    return text


def _diverged_rows(data: Runs, experiment: str | None = None, model: str | None = None, site: str | None = None):
    d = data.diverged
    if experiment is not None:
        d = d[d.experiment == experiment]
    if model is not None:
        d = d[d.model == model]
    if site is not None:
        d = d[d.site == site]
    return d


def _divergence_note(data: Runs, experiment: str, model: str, site: str | None = None) -> str:
    """'2 of 5 diverged at epochs 39-70' for one (experiment, model) group, counting its finished and diverged runs;
    "" when none diverged."""
    d = _diverged_rows(data, experiment, model, site)
    if not len(d):
        return ""
    r = data.runs
    finished = (r.experiment == experiment) & (r.model == model) & ((r.site == site) if site is not None else True)
    return diverged_text(int(finished.sum()) + len(d), d.diverged_epoch)


def _groups(data: Runs) -> list[tuple[str, str]]:
    """Every (experiment, model) with a finished run, complete or diverged, in the papers' order."""
    keys = {tuple(k) for k in data.runs[["experiment", "model"]].values.tolist()}
    keys |= {tuple(k) for k in data.diverged[["experiment", "model"]].values.tolist()}
    return sorted(keys, key=_group_key)


def divergence_table(data: Runs) -> pd.DataFrame:
    """Per (experiment, model): finished runs (`runs`), how many completed and how many diverged, the first and last
    divergence epoch, the non-finite losses seen, and the text the report prints
    ('2 of 20 diverged at epochs 39-70')."""
    rows = []
    for exp, model in _groups(data):
        n_ok = int(((data.runs.experiment == exp) & (data.runs.model == model)).sum())
        d = _diverged_rows(data, exp, model)
        e = d.diverged_epoch.dropna()
        losses = d.diverged_loss.fillna("").astype(str).replace("", "?").value_counts()
        rows.append({"experiment": exp, "model": model, "runs": n_ok + len(d), "complete": n_ok, "diverged": len(d),
                     "first_diverged_epoch": e.min() if len(e) else math.nan,
                     "last_diverged_epoch": e.max() if len(e) else math.nan,
                     "diverged_losses": ", ".join(f"{k} x{v}" for k, v in sorted(losses.items())),
                     "diverged_text": diverged_text(n_ok + len(d), d.diverged_epoch)})
    out = pd.DataFrame(rows, columns=["experiment", "model", "runs", "complete", "diverged", "first_diverged_epoch",
                                      "last_diverged_epoch", "diverged_losses", "diverged_text"])
    return out.astype({"first_diverged_epoch": "Int64", "last_diverged_epoch": "Int64"})  # 39, not 39.0


def diverged_runs_table(data: Runs) -> pd.DataFrame:
    """One row per diverged run: path, experiment, model, seed, diverged_epoch, diverged_loss and its settings."""
    d = data.diverged.copy()
    d["_key"] = [(_group_key((e, m)), str(s)) for e, m, s in zip(d.experiment, d.model, d.seed)]
    d = d.sort_values("_key").drop(columns="_key").reset_index(drop=True)
    return d.astype({"diverged_epoch": "Float64"}).astype({"diverged_epoch": "Int64"})


# ----------------------------------------------------------------------------- tables

def runs_table(data: Runs) -> pd.DataFrame:
    """One row per complete run, accuracies in %."""
    df = data.runs.copy()
    for c in ("train_acc", "test_acc"):
        df[c + "_pct"] = _pct(df.pop(c))
    return df.sort_values(["experiment", "model", "seed"], key=lambda s: s.map(str)).reset_index(drop=True)


def baseline_table(data: Runs) -> pd.DataFrame:
    """Per (experiment, model): n complete runs (the means are over these), runs finished in all and how many of them
    diverged (with the text '2 of 5 diverged at epochs 39-70'), setting, train/test accuracy % and train loss
    (mean, std), published beside. A model whose every run diverged has a row with n = 0 and no means."""
    rows = []
    for exp, model in _groups(data):
        g = data.runs[(data.runs.experiment == exp) & (data.runs.model == model)]
        d = _diverged_rows(data, exp, model)
        both = pd.concat([g[["data", "preprocess", "epochs"]], d[["data", "preprocess", "epochs"]]])
        pubd = _published_baseline(exp, model)
        row = {"experiment": exp, "model": model, "n": len(g), "runs": len(g) + len(d), "diverged": len(d),
               "diverged_text": diverged_text(len(g) + len(d), d.diverged_epoch),
               "seeds": " ".join(str(s) for s in sorted(g.seed.dropna().unique())),
               "data": ",".join(sorted(both.data.dropna().astype(str).unique())),
               "preprocess": ",".join(sorted(both.preprocess.dropna().astype(str).unique())),
               "epochs": ",".join(str(e) for e in sorted(both.epochs.dropna().unique()))}
        for col, scale in (("train_acc", 100.0), ("test_acc", 100.0), ("train_loss", 1.0)):
            mean, std, _ = mean_std(g[col] * scale)
            name = col.replace("_acc", "_acc_pct")
            row[name + "_mean"], row[name + "_std"] = mean, std
        for col, key in (("train_acc_pct", "train"), ("test_acc_pct", "test"), ("train_loss", "loss")):
            m, s = pubd.get(key, (math.nan, math.nan))
            row[f"published_{col}_mean"], row[f"published_{col}_std"] = m, s
        row["published_source"] = pubd["source"]
        rows.append(row)
    cols = ["experiment", "model", "n", "runs", "diverged", "diverged_text", "seeds", "data", "preprocess",
            "epochs"] + [
        f"{p}{c}_{s}" for p in ("", "published_") for c in ("train_acc_pct", "test_acc_pct", "train_loss")
        for s in ("mean", "std")] + ["published_source"]
    return pd.DataFrame(rows, columns=cols)


def _train_rows(data: Runs) -> pd.DataFrame:
    p = data.perturbation
    return p[(p.split == SPLIT) & (p.unit == "all")]


def _baseline_acc(rows: pd.DataFrame) -> pd.Series:
    """Each run's unperturbed accuracy (its 'baseline' row), indexed by run."""
    b = rows[rows.kind == "baseline"]
    return b.groupby("run").accuracy.last()


def use_point_table(data: Runs, kind: str, th: Thresholds = THRESHOLDS) -> pd.DataFrame:
    """Mean train accuracy (%) per model at the USE paper's points of one kind, with a paired t-test
    of each run's perturbed accuracy against its own unperturbed accuracy, and the published value.

        >>> use_point_table(load_runs(["outputs/use_distance_metrics"]), "offset")  # doctest: +SKIP
    """
    points, published = pub.USE_POINTS[kind]
    rows = []
    p = _train_rows(data)
    for (exp, model, site), g in sorted(p.groupby(["experiment", "model", "site"]), key=lambda kv: _group_key(kv[0])):
        base = _baseline_acc(g)
        m, lo, hi = mean_ci(_pct(base))
        pub_base = pub.USE_BASELINE.get(model, {}).get("train", (math.nan,))[0]
        rows.append({"experiment": exp, "model": model, "site": site, "kind": kind, "point_pct": math.nan,
                     "magnitude_used": math.nan, "n": len(base), "mean_pct": m, "ci_lo_pct": lo, "ci_hi_pct": hi,
                     "drop_pp": 0.0 if len(base) else math.nan, "t": math.nan, "p": math.nan,
                     "published_pct": pub_base})
        k = g[g.kind == kind]
        for point, pub_value in zip(points, published.get(model, [math.nan] * len(points))):
            used = _nearest(k.magnitude, point, th.match_rel_tol)
            acc = k[np.isclose(k.magnitude, used)].groupby("run").accuracy.last() if used is not None else pd.Series()
            pair = pd.concat([acc.rename("acc"), base.rename("base")], axis=1, join="inner")
            m, lo, hi = mean_ci(_pct(pair.acc))
            t, pv = paired_ttest(pair.acc, pair.base)
            rows.append({"experiment": exp, "model": model, "site": site, "kind": kind, "point_pct": point * 100,
                         "magnitude_used": used if used is not None else math.nan, "n": len(pair),
                         "mean_pct": m, "ci_lo_pct": lo, "ci_hi_pct": hi,
                         "drop_pp": _pct(pair.base - pair.acc).mean() if len(pair) else math.nan,
                         "t": t, "p": pv, "published_pct": pub_value})
    return pd.DataFrame(rows, columns=["experiment", "model", "site", "kind", "point_pct", "magnitude_used", "n",
                                       "mean_pct", "ci_lo_pct", "ci_hi_pct", "drop_pp", "t", "p", "published_pct"])


def perturbation_curves(data: Runs) -> pd.DataFrame:
    """Accuracy (%) per (experiment, model, site, kind, split, magnitude): mean and 95% CI over runs.
    Whole-layer rows only (unit 'all')."""
    p = data.perturbation[data.perturbation.unit == "all"]
    rows = []
    for key, g in p.groupby(["experiment", "model", "site", "kind", "split", "magnitude"], dropna=False):
        m, lo, hi = mean_ci(_pct(g.accuracy))
        rows.append(dict(zip(["experiment", "model", "site", "kind", "split", "magnitude"], key),
                         n=g.run.nunique(), mean_pct=m, ci_lo_pct=lo, ci_hi_pct=hi))
    return pd.DataFrame(rows, columns=["experiment", "model", "site", "kind", "split", "magnitude", "n",
                                       "mean_pct", "ci_lo_pct", "ci_hi_pct"])


def learn_table(data: Runs) -> pd.DataFrame:
    """Test accuracy (%) per (experiment, model): mean, std, 95% CI (Student t, SEM) over the n complete runs, runs
    finished and diverged beside them; published beside."""
    rows = []
    for exp, model in _groups(data):
        g = data.runs[(data.runs.experiment == exp) & (data.runs.model == model)]
        d = _diverged_rows(data, exp, model)
        mean, std, n = mean_std(_pct(g.test_acc))
        _, lo, hi = mean_ci(_pct(g.test_acc))
        pm, ps = _published_baseline(exp, model).get("test", (math.nan, math.nan))
        dm, ds = pub.LEARN_TEST_DISCUSSION.get(model, (math.nan, math.nan))
        rows.append({"experiment": exp, "model": model, "n": n, "runs": len(g) + len(d), "diverged": len(d),
                     "diverged_text": diverged_text(len(g) + len(d), d.diverged_epoch),
                     "mean_pct": mean, "std_pct": std,
                     "ci_lo_pct": lo, "ci_hi_pct": hi, "published_mean_pct": pm, "published_std_pct": ps,
                     "published_discussion_mean_pct": dm, "published_discussion_std_pct": ds})
    return pd.DataFrame(rows, columns=["experiment", "model", "n", "runs", "diverged", "diverged_text",
                                       "mean_pct", "std_pct", "ci_lo_pct", "ci_hi_pct",
                                       "published_mean_pct", "published_std_pct", "published_discussion_mean_pct",
                                       "published_discussion_std_pct"])


def _test_acc(data: Runs, model: str):
    """(experiment, test accuracies in %) of `model`, from its home experiment if it ran there.
    (None, empty) if it never ran."""
    r = data.runs[data.runs.model == model]
    exp = _pick(r.experiment.value_counts().to_dict(), _home_experiment(model))
    if exp is None:
        return None, pd.Series(dtype=float)
    return exp, _pct(r[r.experiment == exp].test_acc).dropna()


def pairs_table(data: Runs, pairs=DEFAULT_PAIRS) -> pd.DataFrame:
    """Independent two-sample t-tests (pooled variance) and Cohen's d between models' test accuracies (%), for the
    pairs where both models ran; published t, p, |d| beside, and the t that the published means +- std imply.

        >>> pairs_table(load_runs(["outputs/learn_distance_metrics"]), [("ReLU", "Abs")])  # doctest: +SKIP
    """
    published = {(a, b): (t, p, d) for a, b, t, p, d in pub.LEARN_PAIRS}
    rows = []
    for a, b in dict.fromkeys(tuple(p) for p in pairs):  # keeps order, drops repeats
        (exp_a, xa), (exp_b, xb) = _test_acc(data, a), _test_acc(data, b)
        if exp_a is None or exp_b is None:
            if (a, b) not in DEFAULT_PAIRS:  # the user asked for it: say why it is not in the table
                _log(f"pair {a}:{b} skipped: no complete runs of {a if exp_a is None else b}")
            continue
        t, dof, p = independent_ttest(xa, xb)
        pt, pp, pd_ = published.get((a, b), (math.nan, "", math.nan))
        if a in pub.LEARN_TEST and b in pub.LEARN_TEST:
            implied = independent_ttest_from_stats(*pub.LEARN_TEST[a], pub.N_RUNS, *pub.LEARN_TEST[b], pub.N_RUNS)[0]
        else:
            implied = math.nan
        rows.append({"a": a, "b": b, "experiment_a": exp_a, "experiment_b": exp_b, "n_a": len(xa), "n_b": len(xb),
                     "diverged_a": len(_diverged_rows(data, exp_a, a)),
                     "diverged_b": len(_diverged_rows(data, exp_b, b)),
                     "mean_a_pct": xa.mean(), "mean_b_pct": xb.mean(), "diff_pp": xa.mean() - xb.mean(),
                     "t": t, "dof": dof, "p": p, "d": cohens_d(xa, xb),
                     "published_t": pt, "published_p": pp, "published_abs_d": pd_, "published_means_imply_t": implied})
    return pd.DataFrame(rows, columns=["a", "b", "experiment_a", "experiment_b", "n_a", "n_b", "diverged_a",
                                       "diverged_b", "mean_a_pct",
                                       "mean_b_pct", "diff_pp", "t", "dof", "p", "d", "published_t", "published_p",
                                       "published_abs_d", "published_means_imply_t"])


def units_table(data: Runs) -> pd.DataFrame:
    """Dead and rarely active units per (experiment, model, layer, split): counts mean +- std over runs."""
    rows = []
    u = data.units
    for (exp, model, layer, split), g in sorted(u.groupby(["experiment", "model", "layer", "split"]),
                                                key=lambda kv: (_group_key(kv[0][:2]), kv[0][2], kv[0][3] != "train")):
        dm, ds, n = mean_std(g.dead)
        rm, rs, _ = mean_std(g.rare)
        rows.append({"experiment": exp, "model": model, "layer": layer, "split": split, "n_runs": n,
                     "units": g.n.max(), "dead_mean": dm, "dead_std": ds, "rare_mean": rm, "rare_std": rs,
                     "dead_pct_mean": (g.dead / g.n).mean() * 100,
                     "published": pub.LEARN_DEAD.get((model, layer), "") if split == "train" else ""})
    return pd.DataFrame(rows, columns=["experiment", "model", "layer", "split", "n_runs", "units", "dead_mean",
                                       "dead_std", "rare_mean", "rare_std", "dead_pct_mean", "published"])


# ----------------------------------------------------------------------------- scorecard

REPLICATED, NOT_REPLICATED, NOT_RUN = "replicated", "not replicated", "not run"
NOT_RUN_DIVERGED = "not run: diverged"  # a model the claim needs diverged on every run

# USE claim 3 per model: offsets that keep baseline (lo, hi), and |offset| from which it must be lost:
# "ReLU keeps baseline only within about -3%..+2%" (the paper's next points out are -5% and +5%),
# "Abs drops below 99% outside -1%..+1%" (the next points out are -2% and +2%).
USE_CLAIM_3_WINDOWS = {"ReLU_Bias": (-0.03, 0.02, 0.05), "Abs_Bias": (-0.01, 0.01, 0.02)}

CLAIMS = {
    ("USE", 1): "Both models keep baseline accuracy for scale from 10% to 1000% of the original output.",
    ("USE", 2): "Both keep it for clip at 50% and above.",
    ("USE", 3): "Small offsets hurt: ReLU keeps baseline only within about -3%..+2%; "
                "Abs drops below 99% outside -1%..+1%.",
    ("USE", 4): "Offset sensitivity (distance) is far larger than scale/clip sensitivity (intensity).",
    ("LEARN", 1): "ReLU and Abs baselines do not differ significantly.",
    ("LEARN", 2): "ReLU2 collapses (large drop, high variance) and has many dead output units.",
    ("LEARN", 3): "ReLU2-Neg recovers to near the ReLU baseline.",
    ("LEARN", 4): "Abs2 matches Abs; Abs2-Neg is worse and more variable than Abs2.",
    ("LEARN", 5): "Including the bias does not change the pattern.",
    ("LEARN", 6): "OffsetL2 models beat the baselines, with small variance, and the Neg gap disappears.",
}


def _status(checks, diverged=()) -> str:
    """A claim is replicated only when every check ran and passed. A claim that could not run, and needs a model
    whose every run diverged (`diverged`: those models), is 'not run: diverged'."""
    if any(c is False for c in checks):
        return NOT_REPLICATED
    if not checks or any(c is None for c in checks):
        return NOT_RUN_DIVERGED if diverged else NOT_RUN
    return REPLICATED


def _claim_models(paper: str, claim: int, sfx: str = "") -> tuple[str, ...]:
    """The models a claim's checks read (LEARN claim 5: claims 1-4 on the _Bias models)."""
    if paper == "USE":
        return tuple(pub.USE_MODELS)
    if claim == 5:
        return tuple(dict.fromkeys(m for sub in (1, 2, 3, 4) for m in _claim_models(paper, sub, "_Bias")))
    return tuple(m + sfx for m in {1: ("ReLU", "Abs"), 2: ("ReLU", "ReLU2"), 3: ("ReLU", "ReLU2-Neg"),
                                   4: ("Abs", "Abs2", "Abs2-Neg"),
                                   6: ("ReLU", "Abs", "ReLU-L2", "ReLU-L2-Neg", "Abs-L2", "Abs-L2-Neg")}[claim])


def _all_diverged(data: Runs, model: str, use: bool) -> bool:
    """True when `model` has diverged runs and no complete one a claim could read (USE: at the pre-activation site)."""
    r, d = data.runs[data.runs.model == model], _diverged_rows(data, model=model)
    if use:
        r, d = r[r.site == "pre_activation"], d[d.site == "pre_activation"]
    return len(d) > 0 and not len(r)


def _absent_note(data: Runs, model: str, prefer: str, site: str | None = None) -> str:
    """' (5 of 5 diverged at epochs 39-70, learn_distance_metrics)' for a model a claim lacks, from the experiment it
    would have come from (`prefer`, else the one with most diverged runs of it); "" when none of its runs diverged."""
    d = _diverged_rows(data, model=model, site=site)
    exp = _pick(d.experiment.value_counts().to_dict(), prefer)
    note = _divergence_note(data, exp, model, site) if exp is not None else ""
    return f" ({note}, {exp})" if note else ""


def _use_drops(data: Runs, model: str, kind: str):
    """(label, mean drop in pp from each run's own unperturbed train accuracy, indexed by magnitude) or None."""
    p = _train_rows(data)
    p = p[(p.model == model) & (p.site == "pre_activation")]
    exp = _pick(p.experiment.value_counts().to_dict(), "use_distance_metrics")
    if exp is None:
        return None
    g = p[p.experiment == exp]
    base = _baseline_acc(g)
    k = g[g.kind == kind].dropna(subset=["magnitude"])
    drop = _pct(k.run.map(base) - k.accuracy)
    drops = drop.groupby(k.magnitude).mean().dropna().sort_index()
    if not len(drops) or not len(base):
        return None
    note = _divergence_note(data, exp, model, "pre_activation")
    return f"{model} [{exp}, n={len(base)}" + (f", {note}" if note else "") + "]", drops


def _snap(drops: pd.Series, x: float, th: Thresholds) -> float:
    """The grid's version of a published point: the nearest swept magnitude if within tolerance, else x itself."""
    near = _nearest(drops.index, x, th.match_rel_tol)
    return x if near is None else near


def _pctl(m: float) -> str:
    return f"{m * 100:+.4g}%" if m < 0 else f"{m * 100:.4g}%"


def _keeps(drops: pd.Series, lo: float, hi: float, th: Thresholds, what: str):
    """Check: every swept point in [lo, hi] (hi may be inf) keeps baseline (mean drop <= keep_pp)."""
    top = hi if math.isinf(hi) else _snap(drops, hi, th)
    sel = drops[(drops.index >= _snap(drops, lo, th) - 1e-9) & (drops.index <= top + 1e-9)]
    span = f"{_pctl(lo)} and above" if math.isinf(hi) else f"{_pctl(lo)}..{_pctl(hi)}"
    if not len(sel):
        return None, f"no {what} points at {span}"
    return bool(sel.max() <= th.keep_pp), (f"worst drop {sel.max():.2f} pp at {what} {_pctl(sel.idxmax())} "
                                           f"over {len(sel)} points at {span}")


def _loses_outside(drops: pd.Series, edge: float, min_drop: float, strict: bool, th: Thresholds, what: str):
    """Check: every swept point at |magnitude| >= edge, on each side, drops by more than (strict) or at least
    min_drop."""
    results, texts = [], []
    for side, sel in (("-", drops[drops.index <= _snap(drops, -edge, th) + 1e-9]),
                      ("+", drops[drops.index >= _snap(drops, edge, th) - 1e-9])):
        if not len(sel):
            results.append(None)
            texts.append(f"no {what} points at {side}{edge * 100:.3g}% or beyond")
            continue
        least = sel.min()
        results.append(bool(least > min_drop if strict else least >= min_drop))
        texts.append(f"least drop {least:.2f} pp at {what} {_pctl(sel.idxmin())} (|{what}| >= {edge * 100:.3g}%)")
    return results, texts


def _use_claim(data: Runs, claim: int, th: Thresholds):
    checks, ev = [], []
    for model in pub.USE_MODELS:
        if claim in (1, 2):
            kind, lo, hi = ("scale", 0.10, 10.0) if claim == 1 else ("clip", 0.50, math.inf)
            got = _use_drops(data, model, kind)
            if got is None:
                checks.append(None)
                ev.append(f"{model}: no {kind} sweep" + _absent_note(data, model, "use_distance_metrics",
                                                                     "pre_activation"))
                continue
            label, drops = got
            ok, text = _keeps(drops, lo, hi, th, kind)
            checks.append(ok)
            ev.append(f"{label}: {text}")
        elif claim == 3:
            got = _use_drops(data, model, "offset")
            if got is None:
                checks.append(None)
                ev.append(f"{model}: no offset sweep" + _absent_note(data, model, "use_distance_metrics",
                                                                     "pre_activation"))
                continue
            label, drops = got
            keep_lo, keep_hi, edge = USE_CLAIM_3_WINDOWS[model]
            ok, text = _keeps(drops, keep_lo, keep_hi, th, "offset")
            # ReLU must lose baseline (drop > keep_pp) beyond its window; Abs must fall "below 99%" (drop >= drop_pp)
            relu = model == "ReLU_Bias"
            oks, texts = _loses_outside(drops, edge, th.keep_pp if relu else th.drop_pp, relu, th, "offset")
            checks += [ok] + oks
            ev.append(f"{label}: {text}; " + "; ".join(texts))
        else:
            got = {kind: _use_drops(data, model, kind) for kind in USE_KINDS}
            if any(v is None for v in got.values()):
                checks.append(None)
                ev.append(f"{model}: missing sweep(s) " + ", ".join(k for k, v in got.items() if v is None)
                          + _absent_note(data, model, "use_distance_metrics", "pre_activation"))
                continue
            label = got["offset"][0]
            at = {}
            for kind, point in (("offset", -0.10), ("offset", 0.10), ("scale", 0.10), ("clip", 0.50)):
                used = _nearest(got[kind][1].index, point, th.match_rel_tol)
                at[(kind, point)] = got[kind][1][used] if used is not None else math.nan
            if any(math.isnan(v) for v in at.values()):
                checks.append(None)
                ev.append(f"{label}: offset ±10%, scale 10% or clip 50% not swept")
                continue
            distance = max(at[("offset", -0.10)], at[("offset", 0.10)])
            intensity = max(at[("scale", 0.10)], at[("clip", 0.50)])
            ratio = distance / max(intensity, th.floor_pp)
            checks.append(bool(distance >= th.drop_pp and ratio >= th.sensitivity_ratio))
            ev.append(f"{label}: worst drop at offset ±10% {distance:.2f} pp vs scale 10% "
                      f"{at[('scale', 0.10)]:.2f} pp / clip 50% {at[('clip', 0.50)]:.2f} pp: ratio {ratio:.1f}x")
    return checks, ev


def _acc_stats(data: Runs, model: str):
    exp, x = _test_acc(data, model)
    if exp is None or not len(x):
        return None
    mean, std, n = mean_std(x)
    note = _divergence_note(data, exp, model)  # the mean is over the complete runs; the diverged are named beside
    return {"model": model, "exp": exp, "x": x, "mean": mean, "std": std, "n": n, "note": note,
            "text": f"{model} {mean:.2f}" + (f" ± {std:.2f}" if not math.isnan(std) else "")
                    + f" (n={n}, " + (f"{note}, " if note else "") + f"{exp})"}


def _missing(data: Runs, *stats_and_names):
    """The names of the absent models, each with its diverged runs when it has some: 'ReLU2 (5 of 5 diverged ...)'."""
    return [name + _absent_note(data, name, _home_experiment(name)) for s, name in stats_and_names if s is None]


def _learn_claim(data: Runs, claim: int, th: Thresholds, sfx: str = ""):
    """Checks and evidence of LEARN claims 1-4 and 6 on the models named with suffix `sfx` ('' or '_Bias')."""
    def get(name):
        return _acc_stats(data, name + sfx)

    checks, ev = [], []
    if claim == 1:
        relu, abs_ = get("ReLU"), get("Abs")
        if relu is None or abs_ is None:
            return [None], ["missing " + ", ".join(_missing(data, (relu, "ReLU" + sfx), (abs_, "Abs" + sfx)))]
        diff = relu["mean"] - abs_["mean"]
        t, dof, p = independent_ttest(relu["x"], abs_["x"])
        return [bool(abs(diff) <= th.same_pp)], [f"{relu['text']} vs {abs_['text']}: difference {diff:+.2f} pp "
                                                 f"(t={t:.2f}, dof={dof:.0f}, p={p:.3g})"]
    if claim == 2:
        relu, relu2 = get("ReLU"), get("ReLU2")
        if relu is None or relu2 is None:
            return [None], ["missing " + ", ".join(_missing(data, (relu, "ReLU" + sfx), (relu2, "ReLU2" + sfx)))]
        drop = relu["mean"] - relu2["mean"]
        checks.append(bool(drop >= th.collapse_pp))
        ev.append(f"{relu2['text']} vs {relu['text']}: drop {drop:.2f} pp")
        if math.isnan(relu2["std"]) or math.isnan(relu["std"]):
            checks.append(None)
            ev.append("std needs >= 2 runs of each")
        else:
            ratio = relu2["std"] / max(relu["std"], th.floor_pp)
            checks.append(bool(ratio >= th.variance_ratio))
            ev.append(f"std ratio {ratio:.1f}x")
        u = data.units
        u = u[(u.model == relu2["model"]) & (u.experiment == relu2["exp"]) & (u.layer == "output_activation")
              & (u.split == "train")]
        if not len(u):
            checks.append(None)
            ev.append("no output-unit counts in the ReLU2 summaries")
        else:
            frac = (u.dead / u.n).mean()
            checks.append(bool(frac >= th.dead_output_frac))
            ev.append(f"dead output units (train) {frac * 100:.1f}% ({u.dead.mean():.2f} of {u.n.max():.0f})")
        return checks, ev
    if claim == 3:
        relu, neg = get("ReLU"), get("ReLU2-Neg")
        if relu is None or neg is None:
            return [None], ["missing " + ", ".join(_missing(data, (relu, "ReLU" + sfx), (neg, "ReLU2-Neg" + sfx)))]
        gap = relu["mean"] - neg["mean"]
        return [bool(gap <= th.same_pp)], [f"{neg['text']} vs {relu['text']}: {gap:.2f} pp below"]
    if claim == 4:
        abs_, abs2, neg = get("Abs"), get("Abs2"), get("Abs2-Neg")
        missing = _missing(data, (abs_, "Abs" + sfx), (abs2, "Abs2" + sfx), (neg, "Abs2-Neg" + sfx))
        if missing:
            ev.append("missing " + ", ".join(missing))
        if abs_ is not None and abs2 is not None:
            diff = abs2["mean"] - abs_["mean"]
            checks.append(bool(abs(diff) <= th.same_pp))
            ev.append(f"{abs2['text']} vs {abs_['text']}: difference {diff:+.2f} pp")
        else:
            checks.append(None)
        if abs2 is not None and neg is not None:
            gap = abs2["mean"] - neg["mean"]
            checks.append(bool(gap > th.same_pp))
            ev.append(f"{neg['text']}: {gap:.2f} pp below Abs2")
            if math.isnan(neg["std"]) or math.isnan(abs2["std"]):
                checks.append(None)
                ev.append("std needs >= 2 runs of each")
            else:
                ratio = neg["std"] / max(abs2["std"], th.floor_pp)
                checks.append(bool(ratio >= th.variance_ratio))
                ev.append(f"std ratio {ratio:.1f}x")
        else:
            checks.append(None)
        return checks, ev
    if claim == 6:
        for act in ("ReLU", "Abs"):
            base, l2, l2neg = get(act), get(act + "-L2"), get(act + "-L2-Neg")
            for m in (l2, l2neg):
                if m is None or base is None:
                    continue
                checks.append(bool(m["mean"] - base["mean"] > th.beat_pp))
                ev.append(f"{m['text']}: {m['mean'] - base['mean']:+.2f} pp vs {act} {base['mean']:.2f}"
                          + (f" ({base['note']}, {base['exp']})" if base["note"] else ""))
                checks.append(None if math.isnan(m["std"]) else bool(m["std"] <= th.small_std_pp))
            if l2 is not None and l2neg is not None:
                gap = l2["mean"] - l2neg["mean"]
                checks.append(bool(abs(gap) <= th.same_pp))
                ev.append(f"{act}-L2 minus {act}-L2-Neg {gap:+.2f} pp")
            missing = _missing(data, (base, act), (l2, act + "-L2"), (l2neg, act + "-L2-Neg"))
            if missing:
                checks.append(None)
                ev.append("missing " + ", ".join(missing))
        return checks, ev
    raise ValueError(f"LEARN claim {claim}: no such claim here (1-4, 6; 5 is the bias repeat)")


def _threshold_text(paper: str, claim: int, th: Thresholds) -> str:
    return {
        ("USE", 1): f"mean drop <= keep_pp={th.keep_pp} pp at every scale point 10%..1000% (train set)",
        ("USE", 2): f"mean drop <= keep_pp={th.keep_pp} pp at every clip point >= 50% (train set)",
        ("USE", 3): (f"ReLU: drop <= keep_pp={th.keep_pp} pp for offsets in -3%..+2% and > keep_pp at |offset| >= 5%; "
                     f"Abs: drop <= keep_pp in -1%..+1% and >= drop_pp={th.drop_pp} pp at |offset| >= 2%"),
        ("USE", 4): (f"worst drop at offset ±10% >= drop_pp={th.drop_pp} pp and >= sensitivity_ratio="
                     f"{th.sensitivity_ratio} x max(drop at scale 10%, clip 50%, floor_pp={th.floor_pp})"),
        ("LEARN", 1): f"|mean test acc ReLU - Abs| <= same_pp={th.same_pp} pp (t-test shown, not used: few seeds)",
        ("LEARN", 2): (f"ReLU - ReLU2 >= collapse_pp={th.collapse_pp} pp; std(ReLU2) >= variance_ratio="
                       f"{th.variance_ratio} x max(std(ReLU), floor_pp={th.floor_pp}); dead output units (train) "
                       f">= dead_output_frac={th.dead_output_frac}"),
        ("LEARN", 3): f"ReLU - ReLU2-Neg <= same_pp={th.same_pp} pp",
        ("LEARN", 4): (f"|Abs2 - Abs| <= same_pp={th.same_pp} pp; Abs2 - Abs2-Neg > same_pp; std(Abs2-Neg) >= "
                       f"variance_ratio={th.variance_ratio} x max(std(Abs2), floor_pp={th.floor_pp})"),
        ("LEARN", 5): "LEARN claims 1-4, same thresholds, on the _Bias models",
        ("LEARN", 6): (f"each OffsetL2 mean > its activation's LEARN baseline + beat_pp={th.beat_pp} pp; "
                       f"std <= small_std_pp={th.small_std_pp} pp; |X-L2 - X-L2-Neg| <= same_pp={th.same_pp} pp"),
    }[(paper, claim)]


def scorecard(data: Runs, th: Thresholds = THRESHOLDS) -> pd.DataFrame:
    """One row per numbered claim of the two papers: status (replicated / not replicated / not run /
    not run: diverged), the numbers it rests on (each model's diverged runs named beside its mean), and the rule
    it was held to.

        >>> scorecard(load_runs(["outputs"]))[["paper", "claim_id", "status"]]  # doctest: +SKIP
    """
    rows = []
    for (paper, cid), text in CLAIMS.items():
        if paper == "USE":
            checks, ev = _use_claim(data, cid, th)
        elif cid == 5:
            checks, ev = [], []
            for sub in (1, 2, 3, 4):
                c, e = _learn_claim(data, sub, th, "_Bias")
                checks += c
                gone = [m for m in _claim_models(paper, sub, "_Bias") if _all_diverged(data, m, False)]
                ev.append(f"claim {sub} with bias: {_status(c, gone)} ({'; '.join(e)})")
        else:
            checks, ev = _learn_claim(data, cid, th)
        diverged = [m for m in _claim_models(paper, cid) if _all_diverged(data, m, paper == "USE")]
        rows.append({"paper": paper, "claim_id": cid, "claim": text, "status": _status(checks, diverged),
                     "evidence": "; ".join(ev), "threshold": _threshold_text(paper, cid, th)})
    return pd.DataFrame(rows, columns=["paper", "claim_id", "claim", "status", "evidence", "threshold"])


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _save(fig, figures: Path, name: str) -> Path:
    figures.mkdir(parents=True, exist_ok=True)
    png = figures / f"{name}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(figures / f"{name}.pdf", bbox_inches="tight")
    _plt().close(fig)
    return png


def _colors(labels) -> dict:
    cmap = _plt().get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _label(exp: str, model: str, site: str, experiments: set) -> str:
    label = model if len(experiments) == 1 else f"{model} [{exp}]"
    return label if site == "pre_activation" else f"{label} @{site}"


def plot_perturbation(curves: pd.DataFrame, figures: Path) -> list[Path]:
    """figures/perturbation.png: train accuracy vs magnitude, intensity (scale, clip; log x) and distance (offset)
    panels, one line per model with its 95% CI band; figures/clamp.png likewise when a clamp sweep ran."""
    plt = _plt()
    out = []
    c = curves[(curves.split == SPLIT) & curves.magnitude.notna()]
    groups = sorted({tuple(g) for g in c[["experiment", "model", "site"]].values.tolist()}, key=_group_key)
    experiments = {g[0] for g in groups}
    colors = _colors(groups)
    panels = [("perturbation", [("Intensity: scale and clip", {"scale": "-", "clip": "--"}, "log"),
                                ("Distance: offset", {"offset": "-"}, "linear")]),
              ("clamp", [("Clamp to a fraction of the observed range", {"clamp_min": "-", "clamp_max": "--"},
                          "linear")])]
    for name, spec in panels:
        kinds = {k for _, styles, _ in spec for k in styles}
        if not c.kind.isin(kinds).any():
            continue
        fig, axes = plt.subplots(1, len(spec), figsize=(6.5 * len(spec), 4.8), squeeze=False)
        for ax, (title, styles, xscale) in zip(axes[0], spec):
            for g in groups:
                for kind, style in styles.items():
                    d = c[(c.experiment == g[0]) & (c.model == g[1]) & (c.site == g[2]) & (c.kind == kind)]
                    d = d.sort_values("magnitude")
                    if not len(d):
                        continue
                    x = d.magnitude * 100
                    ax.plot(x, d.mean_pct, style, color=colors[g], lw=1.5,
                            label=f"{_label(*g, experiments)} {kind}" if len(styles) > 1 else _label(*g, experiments))
                    # a t interval over few runs can pass 0% or 100%; accuracy cannot, so the band stops there
                    ax.fill_between(x, d.ci_lo_pct.clip(0, 100), d.ci_hi_pct.clip(0, 100), color=colors[g],
                                    alpha=0.2, lw=0)
            ax.set_xscale(xscale)
            ax.set_xlabel("magnitude (% of the unit's range or output)")
            ax.set_ylabel(f"{SPLIT} accuracy (%)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Accuracy under perturbation: mean over runs, band = 95% CI (Student t)")
        out.append(_save(fig, figures, name))
    return out


def _thin(epochs: np.ndarray, most: int = 1000) -> np.ndarray:
    """At most `most` epochs, evenly spread, so 50,000-epoch runs plot quickly."""
    epochs = np.unique(epochs)
    return epochs if len(epochs) <= most else epochs[np.unique(np.linspace(0, len(epochs) - 1, most).astype(int))]


def plot_learning_curves(metrics: pd.DataFrame, figures: Path) -> list[Path]:
    """figures/learning_curves_<experiment>.png: train loss and error rate (train solid, test dashed) vs epoch,
    log y; line = mean over seeds, band = min..max over seeds."""
    plt = _plt()
    out = []
    for exp in sorted(metrics.experiment.unique(), key=_experiment_key):
        m = metrics[metrics.experiment == exp]
        models = sorted(m.model.unique(), key=_model_key)
        colors = _colors(models)
        fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(13, 4.8))
        for model in models:
            d = m[m.model == model]
            for ax, col, style, to_y in ((ax_loss, "train_loss", "-", lambda v: v),
                                         (ax_err, "train_acc", "-", lambda v: 100 * (1 - v)),
                                         (ax_err, "test_acc", "--", lambda v: 100 * (1 - v))):
                e = d.dropna(subset=[col])
                e = e[e.epoch.isin(_thin(e.epoch.values))]
                if not len(e):
                    continue
                y = to_y(e[col]).clip(lower=1e-4)  # zero error cannot sit on a log axis
                agg = y.groupby(e.epoch).agg(["mean", "min", "max"])
                label = model if col != "test_acc" else None
                ax.plot(agg.index, agg["mean"], style, color=colors[model], lw=1.3, label=label)
                ax.fill_between(agg.index, agg["min"], agg["max"], color=colors[model], alpha=0.15, lw=0)
        ax_loss.set(yscale="log", xlabel="epoch (= full-batch step)", ylabel="train loss", title="Training loss")
        ax_err.set(yscale="log", xlabel="epoch (= full-batch step)", ylabel="error rate (%)",
                   title="Error rate: train solid, test dashed")
        for ax in (ax_loss, ax_err):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle(f"{exp}: mean over seeds, band = min..max over seeds")
        out.append(_save(fig, figures, f"learning_curves_{re.sub(r'[^A-Za-z0-9_.-]', '_', exp)}"))
    return out


def plot_test_accuracy(runs: pd.DataFrame, figures: Path) -> list[Path]:
    """figures/test_accuracy.png: final test accuracy per (experiment, model), box plot with every run as a point."""
    plt = _plt()
    groups = sorted({tuple(g) for g in runs[["experiment", "model"]].values.tolist()}, key=_group_key)
    if not groups:
        return []
    experiments = sorted({g[0] for g in groups}, key=_experiment_key)
    colors = _colors(experiments)
    values = [_pct(runs[(runs.experiment == e) & (runs.model == m)].test_acc.dropna()).values for e, m in groups]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.7 * len(groups) + 2), 5))
    ax.boxplot(values, tick_labels=[m for _, m in groups], showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same runs give the same picture
    for i, ((exp, _), v) in enumerate(zip(groups, values), start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=14, color=colors[exp], alpha=0.8, zorder=3,
                   label=exp if exp not in ax.get_legend_handles_labels()[1] else None)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Final test accuracy per model (box: quartiles; points: runs; colour: experiment)")
    ax.tick_params(axis="x", rotation=45)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return [_save(fig, figures, "test_accuracy")]


# ----------------------------------------------------------------------------- report.md

def _num(x, nd: int = 2) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return ""
    return f"{x:.{nd}f}" if isinstance(x, (float, np.floating)) else str(x)


def _int(x) -> str:
    return "" if pd.isna(x) else str(int(x))


def _pm(mean, std, nd: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return ""
    return f"{mean:.{nd}f} ± {std:.{nd}f}" if not math.isnan(std) else f"{mean:.{nd}f}"


def _p(p) -> str:
    return "" if p is None or math.isnan(p) else f"{p:.2g}"


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of a frame of already formatted cells.

        >>> print(md_table(pd.DataFrame({"model": ["ReLU"], "n": ["3"]})))
        | model | n |
        | --- | --- |
        | ReLU | 3 |
    """
    if not len(df):
        return "_none_"

    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _md_baseline(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "experiment": t.experiment, "model": t.model, "n": t.n, "diverged": t.diverged_text,
        "data": t.data + " " + t.preprocess, "epochs": t.epochs,
        "train acc %": [_pm(m, s) for m, s in zip(t.train_acc_pct_mean, t.train_acc_pct_std)],
        "published": [_pm(m, s) for m, s in zip(t.published_train_acc_pct_mean, t.published_train_acc_pct_std)],
        "test acc %": [_pm(m, s) for m, s in zip(t.test_acc_pct_mean, t.test_acc_pct_std)],
        "published ": [_pm(m, s) for m, s in zip(t.published_test_acc_pct_mean, t.published_test_acc_pct_std)],
        "train loss": [_pm(m, s, 4) for m, s in zip(t.train_loss_mean, t.train_loss_std)],
        "published  ": [_pm(m, s, 4) for m, s in zip(t.published_train_loss_mean, t.published_train_loss_std)],
        "source": t.published_source})


def _md_use_points(t: pd.DataFrame) -> pd.DataFrame:
    """Rows = points, column groups = models (ours, published, magnitude used, t, p), like the paper's tables."""
    if not len(t):
        return t
    experiments = set(t.experiment)
    columns = []
    for (exp, model, site), g in sorted(t.groupby(["experiment", "model", "site"], sort=False),
                                        key=lambda kv: _group_key(kv[0])):
        name = _label(exp, model, site, experiments)
        offset = g.kind.iloc[0] == "offset"
        col = pd.DataFrame({
            "point": ["baseline" if math.isnan(p) else f"{p:+g}%" if offset else f"{p:g}%" for p in g.point_pct],
            f"{name} ours": [_num(v) + ("" if n else " (none)") for v, n in zip(g.mean_pct, g.n)],
            f"{name} published": [_num(v) for v in g.published_pct],
            f"{name} used": ["" if math.isnan(m) else f"{m * 100:+.4g}%" if offset else f"{m * 100:.4g}%"
                             for m in g.magnitude_used],
            f"{name} t": [_num(v) for v in g.t],
            f"{name} p": [_p(v) for v in g.p]}).set_index("point")
        columns.append(col)
    # Rows in the paper's order (baseline first); a model missing a point gets empty cells.
    order = list(dict.fromkeys(label for col in columns for label in col.index))
    return pd.concat([c.reindex(order) for c in columns], axis=1).fillna("").reset_index()


def _md_learn(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "experiment": t.experiment, "model": t.model, "n": t.n, "diverged": t.diverged_text,
        "test acc % (mean ± std)": [_pm(m, s) for m, s in zip(t.mean_pct, t.std_pct)],
        "95% CI": ["" if math.isnan(lo) else f"{lo:.2f} .. {hi:.2f}" for lo, hi in zip(t.ci_lo_pct, t.ci_hi_pct)],
        "published": [_pm(m, s) for m, s in zip(t.published_mean_pct, t.published_std_pct)],
        "published (discussion)": [_pm(m, s) for m, s in zip(t.published_discussion_mean_pct,
                                                             t.published_discussion_std_pct)]})


def _md_pairs(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "a vs b": t.a + " vs " + t.b,
        "n": [f"{na}{f' ({da} diverged)' if da else ''} / {nb}{f' ({db} diverged)' if db else ''}"
              for na, da, nb, db in zip(t.n_a, t.diverged_a, t.n_b, t.diverged_b)],
        "diff pp": [_num(v) for v in t.diff_pp], "t": [_num(v) for v in t.t],
        "dof": [_num(v, 0) for v in t.dof], "p": [_p(v) for v in t.p], "d": [_num(v) for v in t.d],
        "published t": [_num(v) for v in t.published_t], "published p": t.published_p,
        "published abs d": [_num(v) for v in t.published_abs_d],
        "t implied by published mean ± std": [_num(v, 1) for v in t.published_means_imply_t]})


def _md_units(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "experiment": t.experiment, "model": t.model, "layer": t.layer, "split": t.split, "runs": t.n_runs,
        "units": t.units, "dead": [_pm(m, s) for m, s in zip(t.dead_mean, t.dead_std)],
        "dead %": [_num(v, 1) for v in t.dead_pct_mean],
        "rare (<1% of samples)": [_pm(m, s) for m, s in zip(t.rare_mean, t.rare_std)], "published": t.published})


def _setting(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "?"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _mixed_variants(data: Runs) -> list[str]:
    """Groups whose finished runs (complete or diverged) mix variants, learning rates or hidden widths. A variant
    absent from an older summary reads as "" (the default config); an absent lr or hidden is not a difference."""
    cols = ["experiment", "model", "variant", "lr", "hidden"]
    both = pd.concat([data.runs[cols].assign(diverged=0), data.diverged[cols].assign(diverged=1)], ignore_index=True)
    both["variant"] = both.variant.fillna("").astype(str)
    out = []
    for (exp, model), g in both.groupby(["experiment", "model"]):
        if g.variant.nunique() < 2 and g.lr.dropna().map(_setting).nunique() < 2 \
                and g.hidden.dropna().map(_setting).nunique() < 2:
            continue
        parts = []
        for (variant, lr, hidden), h in g.groupby([g.variant, g.lr.map(_setting), g.hidden.map(_setting)]):
            parts.append(f"variant={variant!r} lr={lr} hidden={hidden} ({len(h)} run(s)"
                         + (f", {int(h.diverged.sum())} diverged" if h.diverged.sum() else "") + ")")
        out.append(f"{model} [{exp}] mixes variants " + "; ".join(parts)
                   + ": its mean and its diverged count pool different settings")
    return out


def _warnings(data: Runs) -> list[str]:
    """Things a reader must know before trusting a mean: mixed settings or variants in a group, repeated seeds."""
    out = _mixed_variants(data)
    for (exp, model), g in data.runs.groupby(["experiment", "model"]):
        settings = g[["data", "preprocess", "epochs"]].astype(str).drop_duplicates()
        if len(settings) > 1:
            out.append(f"{model} [{exp}] mixes settings " + "; ".join(" ".join(r) for r in settings.values.tolist())
                       + ": its mean pools different experiments")
        repeats = g.seed.astype(str).value_counts()
        repeats = repeats[repeats > 1]
        if len(repeats):
            out.append(f"{model} [{exp}] has repeated seeds (" + ", ".join(f"seed {s} x{c}" for s, c in repeats.items())
                       + "): the same run may have been copied twice")
    p = data.perturbation
    swept = p[p.kind != "baseline"].groupby(["experiment", "model"]).run.unique()
    based = set(p[(p.kind == "baseline") & (p.split == SPLIT) & (p.unit == "all")].run)
    for (exp, model), runs in swept.items():
        lacking = [r for r in runs if r not in based]
        if lacking:
            out.append(f"{model} [{exp}]: {len(lacking)} run(s) have a sweep but no unperturbed '{SPLIT}' baseline "
                       "row in perturbation.csv, so they are left out of the paired tests and the scorecard")
    return out


def write_markdown(out: Path, dirs, data: Runs, tables: dict, card: pd.DataFrame, figures: list[Path],
                   th: Thresholds) -> Path:
    """report.md: the scorecard, every table and every figure on one page."""
    fig = {p.stem: p.relative_to(out).as_posix() for p in figures}
    counts = card.status.value_counts()
    lines = ["# dmlight report", "",
             f"Runs read from: {', '.join(f'`{d}`' for d in dirs)}. "
             f"**{len(data.runs)} complete runs**, {len(data.incomplete)} incomplete "
             f"(listed at the end, counted nowhere), {len(data.diverged)} diverged (finished with a non-finite "
             "training loss: counted beside each mean, never in one). "
             "Accuracies in %, differences in percentage points (pp). Every table is also in `tables/` as CSV.", ""]
    for w in _warnings(data):
        lines += [f"> **Warning:** {w}", ""]
    lines += ["## Scorecard", "",
              f"{counts.get(REPLICATED, 0)} replicated, {counts.get(NOT_REPLICATED, 0)} not replicated, "
              f"{counts.get(NOT_RUN, 0)} not run, {counts.get(NOT_RUN_DIVERGED, 0)} not run: diverged "
              "(`scorecard.csv`). A claim is replicated when every check ran and passed; it is not run: diverged "
              "when a model it needs diverged on every run. Thresholds are listed under Notes.", "",
              md_table(pd.DataFrame({"paper": card.paper, "claim": card.claim_id.astype(str), "statement": card.claim,
                                     "status": ["**" + s + "**" for s in card.status], "evidence": card.evidence})), ""]
    lines += ["## Runs and baseline", "", "Train/test accuracy and train loss at the end of training, mean ± std over "
              "the n complete runs, published beside (USE baseline or LEARN test accuracy); diverged runs are counted "
              "beside, never in the mean. `tables/baseline.csv`, `tables/runs.csv`.",
              "", md_table(_md_baseline(tables["baseline"])), ""]
    lines += ["## USE: perturbation (Neural Networks Use Distance Metrics)", ""]
    if "perturbation" in fig:
        lines += [f"![perturbation]({fig['perturbation']})", ""]
    if not len(tables["use_scale"]):
        lines += ["_No run has a perturbation sweep (perturbation.csv)._", ""]
    else:
        lines += [f"Mean {SPLIT}-set accuracy at the paper's points; `used` is the swept magnitude matched to the "
                  "point; t and p: paired t-test of each run's perturbed accuracy against its own unperturbed "
                  "accuracy (the baseline row). The paper's own t-tests used grid index 50 as baseline.", ""]
        for kind in USE_KINDS:
            lines += [f"### {kind}", "", md_table(_md_use_points(tables[f"use_{kind}"])), ""]
    if "clamp" in fig:
        lines += ["### clamp (LEARN)", "", f"![clamp]({fig['clamp']})", ""]
    lines += ["## LEARN: test accuracy (Neural Networks Learn Distance Metrics)", "",
              "Mean ± std over the n complete runs (diverged runs counted beside), 95% CI by Student t (n-1 dof, SEM); published beside (the paper's discussion "
              "quotes other values for some models).", "", md_table(_md_learn(tables["learn_accuracy"])), ""]
    if "test_accuracy" in fig:
        lines += [f"![test accuracy]({fig['test_accuracy']})", ""]
    lines += ["### Pairwise tests", "", "Independent two-sample t-test with pooled variance (dof n_a + n_b - 2) and "
              "Cohen's d (pooled sd), for a - b; published |d|. The last column is the t that the published "
              "means ± std imply with 20 runs each, to show where the paper's t-tests and its table disagree.", "",
              md_table(_md_pairs(tables["learn_pairs"])), ""]
    lines += ["## Dead and rarely active units", "", "Per activation layer: dead = |activation| <= 1e-6 on every "
              "sample, rare = non-zero on fewer than 1% of samples; counts mean ± std over runs.", "",
              md_table(_md_units(tables["units"])), ""]
    curves = [k for k in fig if k.startswith("learning_curves_")]
    lines += ["## Learning curves", ""] + ([f"![{k}]({fig[k]})\n" for k in curves] or ["_No metrics.csv found._", ""])
    lines += ["## Diverged runs", "", f"Runs whose training loss became non-finite: {len(data.diverged)}. They "
              "finished (a deterministic result of the model and its settings), so they are not incomplete, but they "
              "have no accuracy: every mean is over the runs that completed, with this count beside it. A claim that "
              "needs a model whose every run diverged is not run: diverged. `tables/diverged.csv` (per model), "
              "`tables/diverged_runs.csv` (per run).", ""]
    if len(data.diverged):
        div = tables["diverged"]
        div = div[div.diverged > 0]
        div = div.assign(**{c: [_int(v) for v in div[c]] for c in ("first_diverged_epoch", "last_diverged_epoch")})
        per_run = tables["diverged_runs"][["path", "experiment", "model", "seed", "diverged_epoch", "diverged_loss",
                                           "variant", "lr"]]
        per_run = per_run.assign(diverged_epoch=[_int(v) for v in per_run.diverged_epoch],
                                 lr=[_setting(v) for v in per_run.lr])
        lines += [md_table(div.fillna("").astype(str)), "", md_table(per_run.fillna("").astype(str)), ""]
    shown = data.incomplete.assign(last_train_acc_pct=[_num(v) for v in data.incomplete.last_train_acc_pct])
    lines += ["## Incomplete runs", "", f"Run folders without a complete summary.json: {len(data.incomplete)}. "
              "They are counted in no table. `tables/incomplete_runs.csv`.", "",
              md_table(shown.fillna("").astype(str)), ""]
    lines += ["## Notes: scorecard thresholds", "", md_table(pd.DataFrame(
        {"threshold": [f.name for f in fields(th)], "value": [str(getattr(th, f.name)) for f in fields(th)],
         "why": [f.metadata["why"] for f in fields(th)]})), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- W&B

def wandb_payload(tables: dict, figures: list[Path], card: pd.DataFrame) -> dict:
    """What the report logs to W&B, without touching wandb: {"tables": {name: frame}, "images": {name: png path},
    "summary": {"claim/USE-1": status, ...}}.

        >>> card = pd.DataFrame({"paper": ["USE"], "claim_id": [1], "status": ["replicated"]})
        >>> wandb_payload({}, [Path("figures/perturbation.png")], card)["summary"]
        {'claim/USE-1': 'replicated'}
    """
    return {"tables": {**tables, "scorecard": card},
            "images": {p.stem: p for p in figures},
            "summary": {f"claim/{r.paper}-{r.claim_id}": r.status for r in card.itertuples()}}


def log_to_wandb(payload: dict, out: Path, group: str, config: dict) -> None:
    """Log the payload into one W&B run (job_type 'report'); wandb is imported only here."""
    import wandb
    mode = wandb_mode()
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dmlight"), job_type="report", group=group,
                     dir=str(out), mode=mode, config=config)
    logged = {}
    for name, df in payload["tables"].items():
        clean = df.astype(object).where(df.notna(), None)  # NaN is not JSON; W&B shows None as empty
        logged[f"table/{name}"] = wandb.Table(columns=[str(c) for c in df.columns], data=clean.values.tolist())
    for name, path in payload["images"].items():
        logged[f"figure/{name}"] = wandb.Image(str(path))
    run.log(logged)
    for key, value in payload["summary"].items():
        run.summary[key] = value
    run.finish()
    _log(f"W&B: logged {len(payload['tables'])} tables and {len(payload['images'])} figures (mode {mode})")


# ----------------------------------------------------------------------------- entry points

def build_report(dirs, out=None, wandb: bool = False, pairs=None, thresholds: Thresholds = THRESHOLDS) -> Path:
    """Read every run under `dirs`, write report.md, scorecard.csv, tables/ and figures/ into `out`
    (default: <first dir>/report) and return that folder. `pairs` adds (a, b) model pairs to the LEARN t-tests.

        >>> out = build_report(["outputs/use_distance_metrics"])  # doctest: +SKIP
        >>> (out / "report.md").exists()                           # doctest: +SKIP
        True
    """
    dirs = [Path(d) for d in ([dirs] if isinstance(dirs, (str, Path)) else dirs)]
    if not dirs:
        raise ValueError("report: give at least one folder of runs, e.g. python -m dmlight.report outputs/learn_bias")
    out = Path(out) if out is not None else dirs[0] / "report"
    data = load_runs(dirs, skip=[out])
    _log(f"runs found: {len(data.runs) + len(data.incomplete) + len(data.diverged)} under "
         f"{', '.join(map(str, dirs))}: {len(data.runs)} complete, {len(data.incomplete)} incomplete, "
         f"{len(data.diverged)} diverged")
    for path, why in zip(data.incomplete.path, data.incomplete.reason):
        _log(f"  incomplete: {path}: {why}")
    for r in data.diverged.itertuples():
        _log(f"  diverged: {r.path}: loss {r.diverged_loss or '?'} at epoch {_int(r.diverged_epoch) or '?'}")
    for w in _warnings(data):
        _log(f"warning: {w}")

    tables = {"runs": runs_table(data), "incomplete_runs": data.incomplete, "diverged": divergence_table(data),
              "diverged_runs": diverged_runs_table(data), "baseline": baseline_table(data),
              **{f"use_{k}": use_point_table(data, k, thresholds) for k in USE_KINDS},
              "perturbation_curves": perturbation_curves(data), "learn_accuracy": learn_table(data),
              "learn_pairs": pairs_table(data, list(DEFAULT_PAIRS) + list(pairs or [])), "units": units_table(data)}
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(out / "tables" / f"{name}.csv", index=False)
    card = scorecard(data, thresholds)
    card.to_csv(out / "scorecard.csv", index=False)
    _log(f"tables written: {len(tables)} CSV files in {out / 'tables'}, scorecard in {out / 'scorecard.csv'}")

    figures = (plot_perturbation(tables["perturbation_curves"], out / "figures")
               + plot_test_accuracy(data.runs, out / "figures") + plot_learning_curves(data.metrics, out / "figures"))
    _log(f"figures written: {len(figures)} (png + pdf) in {out / 'figures'}")

    md = write_markdown(out, dirs, data, tables, card, figures, thresholds)
    counts = card.status.value_counts()
    _log(f"scorecard: {counts.get(REPLICATED, 0)} replicated, {counts.get(NOT_REPLICATED, 0)} not replicated, "
         f"{counts.get(NOT_RUN, 0)} not run, {counts.get(NOT_RUN_DIVERGED, 0)} not run: diverged")
    if wandb:
        group = "+".join(sorted(data.runs.experiment.unique(), key=_experiment_key)) or "report"
        log_to_wandb(wandb_payload(tables, figures, card), out, group,
                     {"dirs": [str(d) for d in dirs], "thresholds": {f.name: getattr(thresholds, f.name)
                                                                      for f in fields(thresholds)}})
    _log(f"report: {md}")
    for fig in figures:
        if fig.name == "perturbation.png":
            _log(f"perturbation figure: {fig}")
    return out


def _parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise SystemExit(f"report: {key}={value!r} is not a boolean; use {key}=true or {key}=false")


def _parse_pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, value.split(",")):
        if item.count(":") != 1:
            raise SystemExit(f"report: pair {item!r} in report.pairs is not 'A:B'; "
                             "e.g. report.pairs=ReLU:Abs,ReLU2:ReLU")
        pairs.append(tuple(s.strip() for s in item.split(":")))
    return pairs


def main(argv=None) -> Path:
    """CLI: folders are positional; report.out=, report.wandb=, report.pairs= and report.<threshold>= override."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    dirs, out, use_wandb, pairs, th = [], None, False, [], {}
    names = {f.name for f in fields(Thresholds)}
    for arg in argv:
        if "=" not in arg:
            dirs.append(arg)
            continue
        key, value = arg.split("=", 1)
        short = key.removeprefix("report.")
        if short == "out":
            out = value
        elif short == "wandb":
            use_wandb = _parse_bool(key, value)
        elif short == "pairs":
            pairs = _parse_pairs(value)
        elif short in names:
            try:
                th[short] = float(value)
            except ValueError:
                raise SystemExit(f"report: {key}={value!r} is not a number") from None
        else:
            raise SystemExit(f"report: unknown option {key!r}; accepted: report.out, report.wandb, report.pairs, "
                             + ", ".join(f"report.{n}" for n in sorted(names)))
    return build_report(dirs, out=out, wandb=use_wandb, pairs=pairs, thresholds=replace(THRESHOLDS, **th))


if __name__ == "__main__":
    main()
