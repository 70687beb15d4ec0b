"""Runs by (experiment, model): the papers' order, where each model is read from, how many of a group diverged,
and the warnings a group's mixed settings call for. Shared by the tables, the claims, the figures and report.md."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dmlight import published as pub
from dmlight.report.load import Runs
from dmlight.published import EXPERIMENT_ORDER, MODEL_ORDER, USE_KINDS  # noqa: F401  (the report's names)

SPLIT = "train"  # the USE paper measures perturbed accuracy on the training set


def model_key(model: str):
    base = model.removesuffix("_Bias")
    return (model.endswith("_Bias"), MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER), model)


def experiment_key(experiment: str):
    return (EXPERIMENT_ORDER.index(experiment) if experiment in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER), experiment)


def group_key(g):
    return (experiment_key(g[0]), model_key(g[1]))


def label(exp: str, model: str, site: str, experiments: set) -> str:
    """A group's name in a legend or a column: the model, its experiment when several are shown, its site if not
    the USE paper's."""
    name = model if len(experiments) == 1 else f"{model} [{exp}]"
    return name if site == "pre_activation" else f"{name} @{site}"


def home_experiment(model: str) -> str:
    """The experiment in which the papers train `model`."""
    if "-L2" in model:
        return "offset_l2"
    return "learn_bias" if model.endswith("_Bias") else "learn_distance_metrics"


def pick(experiments_by_count: dict, prefer: str) -> str | None:
    """The preferred experiment if it has the model, else the one with the most runs of it."""
    if not experiments_by_count:
        return None
    if prefer in experiments_by_count:
        return prefer
    return max(sorted(experiments_by_count), key=lambda e: experiments_by_count[e])


def published_baseline(experiment: str, model: str) -> dict:
    """Published train/test/loss (mean, std) for a group, and which paper they come from."""
    if model in pub.USE_BASELINE and experiment.startswith("use"):
        return {"source": "USE", **pub.USE_BASELINE[model]}
    if model in pub.LEARN_TEST:
        return {"source": "LEARN", "test": pub.LEARN_TEST[model]}
    return {"source": ""}


def nearest(magnitudes, point: float, rel_tol: float):
    """The swept magnitude nearest to a published point, or None when none is within rel_tol of it."""
    m = np.asarray(sorted(set(float(x) for x in magnitudes if not pd.isna(x))))
    if not len(m):
        return None
    best = float(m[np.argmin(np.abs(m - point))])
    return best if abs(best - point) <= rel_tol * abs(point) + 1e-12 else None


def groups(data: Runs) -> list[tuple[str, str]]:
    """Every (experiment, model) with a finished run, complete or diverged, in the papers' order."""
    keys = {tuple(k) for k in data.runs[["experiment", "model"]].values.tolist()}
    keys |= {tuple(k) for k in data.diverged[["experiment", "model"]].values.tolist()}
    return sorted(keys, key=group_key)


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


def diverged_rows(data: Runs, experiment: str | None = None, model: str | None = None, site: str | None = None):
    d = data.diverged
    if experiment is not None:
        d = d[d.experiment == experiment]
    if model is not None:
        d = d[d.model == model]
    if site is not None:
        d = d[d.site == site]
    return d


def divergence_note(data: Runs, experiment: str, model: str, site: str | None = None) -> str:
    """'2 of 5 diverged at epochs 39-70' for one (experiment, model) group, counting its finished and diverged runs;
    "" when none diverged."""
    d = diverged_rows(data, experiment, model, site)
    if not len(d):
        return ""
    r = data.runs
    finished = (r.experiment == experiment) & (r.model == model) & ((r.site == site) if site is not None else True)
    return diverged_text(int(finished.sum()) + len(d), d.diverged_epoch)


# ----------------------------------------------------------------------------- warnings

def setting(v) -> str:
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
        if g.variant.nunique() < 2 and g.lr.dropna().map(setting).nunique() < 2 \
                and g.hidden.dropna().map(setting).nunique() < 2:
            continue
        parts = []
        for (variant, lr, hidden), h in g.groupby([g.variant, g.lr.map(setting), g.hidden.map(setting)]):
            parts.append(f"variant={variant!r} lr={lr} hidden={hidden} ({len(h)} run(s)"
                         + (f", {int(h.diverged.sum())} diverged" if h.diverged.sum() else "") + ")")
        out.append(f"{model} [{exp}] mixes variants " + "; ".join(parts)
                   + ": its mean and its diverged count pool different settings")
    return out


# Provenance fields whose difference can move a mean (the commit included: the code itself may differ).
MIXED_PROVENANCE = ("dmlight", "git_commit", "torch", "lightning", "python", "device_name")


def _mixed_provenance(data: Runs) -> list[str]:
    out = []
    for (exp, model), g in data.runs.groupby(["experiment", "model"]):
        known = g[[c for c in MIXED_PROVENANCE if c in g]].fillna("").astype(str)
        mixed = [c for c in known if known[c].nunique() > 1]
        if mixed:
            parts = ["; ".join(f"{c} {v or '?'} x{n}" for v, n in known[c].value_counts().sort_index().items())
                     for c in mixed]
            out.append(f"{model} [{exp}] mixes versions or devices ({' | '.join(parts)}): its mean pools runs "
                       "that different software or hardware produced (tables/provenance.csv)")
    return out


def _early_final_sweeps(data: Runs) -> list[str]:
    """Runs that swept during training but not at their last epoch (summary's `epochs`): their final sweep, which
    every table and claim reads, is an earlier, coarser one."""
    last = data.sweeps.groupby("run").epoch.max()
    planned = pd.to_numeric(data.runs.set_index("run").epochs, errors="coerce").reindex(last.index)
    early = data.runs.set_index("run").loc[last.index[planned.to_numpy() > last.to_numpy()]]
    return [f"{model} [{exp}]: {len(g)} run(s) swept during training but not at their last epoch (their last sweep: "
            + ", ".join(f"epoch {int(last[r])} of {int(planned[r])}" for r in g.index)
            + "): the tables and the scorecard read that earlier sweep" for (exp, model), g in
            early.groupby(["experiment", "model"])]


def warnings(data: Runs) -> list[str]:
    """Things a reader must know before trusting a mean: mixed settings, variants, versions or devices in a group,
    repeated seeds."""
    out = _mixed_variants(data) + _mixed_provenance(data)
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
    out += _early_final_sweeps(data)
    p = data.perturbation
    swept = p[p.kind != "baseline"].groupby(["experiment", "model"]).run.unique()
    based = set(p[(p.kind == "baseline") & (p.split == SPLIT) & (p.unit == "all")].run)
    for (exp, model), runs in swept.items():
        lacking = [r for r in runs if r not in based]
        if lacking:
            out.append(f"{model} [{exp}]: {len(lacking)} run(s) have a sweep but no unperturbed '{SPLIT}' baseline "
                       "row in perturbation.csv, so they are left out of the paired tests and the scorecard")
    return out
