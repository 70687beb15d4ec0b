"""What a claim is checked on: a model's mean drop under a perturbation, its test-accuracy statistics, window tests
on a drop curve, and the scorecard's statuses. The claims themselves are in claims.py."""
from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

from dmlight.report.groups import divergence_note, diverged_rows, home_experiment, nearest, pick
from dmlight.report.load import Runs, pct
from dmlight.report.tables import baseline_acc, model_accuracies, train_rows
from dmlight.report.thresholds import Thresholds
from dmlight.stats import mean_std

REPLICATED, NOT_REPLICATED, NOT_RUN = "replicated", "not replicated", "not run"
NOT_RUN_DIVERGED = "not run: diverged"  # a model the claim needs diverged on every run
STATUSES = (REPLICATED, NOT_REPLICATED, NOT_RUN, NOT_RUN_DIVERGED)
USE_SITE, USE_HOME = "pre_activation", "use_distance_metrics"  # where USE claims read their sweeps


def status(checks, diverged=()) -> str:
    """A claim is replicated only when every check ran and passed. A claim that could not run, and needs a model
    whose every run diverged (`diverged`: those models), is 'not run: diverged'.

        >>> status([True, True]), status([True, None]), status([None], ["ReLU2"]), status([False, None])
        ('replicated', 'not run', 'not run: diverged', 'not replicated')
    """
    if any(c is False for c in checks):
        return NOT_REPLICATED
    if not checks or any(c is None for c in checks):
        return NOT_RUN_DIVERGED if diverged else NOT_RUN
    return REPLICATED


def all_diverged(data: Runs, model: str, site: str | None = None) -> bool:
    """True when `model` has diverged runs and no complete one a claim could read (at `site`, when given)."""
    r, d = data.runs[data.runs.model == model], diverged_rows(data, model=model)
    if site is not None:
        r, d = r[r.site == site], d[d.site == site]
    return len(d) > 0 and not len(r)


def absent_note(data: Runs, model: str, prefer: str, site: str | None = None) -> str:
    """' (5 of 5 diverged at epochs 39-70, learn_distance_metrics)' for a model a claim lacks, from the experiment it
    would have come from (`prefer`, else the one with most diverged runs of it); "" when none of its runs diverged."""
    d = diverged_rows(data, model=model, site=site)
    exp = pick(d.experiment.value_counts().to_dict(), prefer)
    note = divergence_note(data, exp, model, site) if exp is not None else ""
    return f" ({note}, {exp})" if note else ""


# ----------------------------------------------------------------------------- USE: drop curves

def use_drops(data: Runs, model: str, kind: str):
    """(label, mean drop in pp from each run's own unperturbed train accuracy, indexed by magnitude) or None."""
    p = train_rows(data)
    p = p[(p.model == model) & (p.site == USE_SITE)]
    exp = pick(p.experiment.value_counts().to_dict(), USE_HOME)
    if exp is None:
        return None
    g = p[p.experiment == exp]
    base = baseline_acc(g)
    drops = mean_drops(g, kind)
    if not len(drops) or not len(base):
        return None
    note = divergence_note(data, exp, model, USE_SITE)
    return f"{model} [{exp}, n={len(base)}" + (f", {note}" if note else "") + "]", drops


def mean_drops(sweep: pd.DataFrame, kind: str) -> pd.Series:
    """Mean drop (pp) of `kind`'s points from each run's own unperturbed accuracy, indexed by magnitude, over the
    runs in `sweep` (whole-layer rows of one split, one sweep per run: its final one, or one epoch's)."""
    base = baseline_acc(sweep)
    k = sweep[sweep.kind == kind].dropna(subset=["magnitude"])
    drop = pct(k.run.map(base) - k.accuracy)
    return drop.groupby(k.magnitude).mean().dropna().sort_index()


# USE claim 4's points: distance = the worse of offset -10% and +10%; intensity = the worse of scale 10%, clip 50%.
DISTANCE_POINTS, INTENSITY_POINTS = (("offset", -0.10), ("offset", 0.10)), (("scale", 0.10), ("clip", 0.50))


class Sensitivity(NamedTuple):
    at: dict          # (kind, point) -> mean drop (pp) at the swept magnitude nearest the point
    used: dict        # (kind, point) -> that swept magnitude
    distance: float   # worst drop at offset ±10%
    intensity: float  # worst drop at scale 10% and clip 50%
    ratio: float      # distance / max(intensity, floor_pp)


def sensitivity(drops: dict, th: Thresholds) -> Sensitivity | None:
    """USE claim 4's offset-vs-intensity ratio from one model's mean drop curves (kind -> mean_drops), each point
    matched to the nearest swept magnitude within match_rel_tol; None when a point is not swept. Drops are averaged
    over runs first, then the ratio is taken (the ratio of the mean drops, not the mean of per-run ratios).

        >>> d = {"offset": pd.Series([30.0, 20.0], [-0.1, 0.1]), "scale": pd.Series([2.0], [0.1]),
        ...      "clip": pd.Series([5.0], [0.5])}
        >>> sensitivity(d, Thresholds()).ratio
        6.0
    """
    at, used = {}, {}
    for kind, point in DISTANCE_POINTS + INTENSITY_POINTS:
        curve = drops.get(kind)
        m = None if curve is None else nearest(curve.index, point, th.match_rel_tol)
        at[(kind, point)], used[(kind, point)] = (float(curve[m]), m) if m is not None else (math.nan, math.nan)
    if any(math.isnan(v) for v in at.values()):
        return None
    distance = max(at[p] for p in DISTANCE_POINTS)
    intensity = max(at[p] for p in INTENSITY_POINTS)
    return Sensitivity(at, used, distance, intensity, distance / max(intensity, th.floor_pp))


def no_sweep(data: Runs, model: str, what: str) -> str:
    """Evidence for a USE model without the sweep a claim needs, naming its diverged runs."""
    return f"{model}: {what}" + absent_note(data, model, USE_HOME, USE_SITE)


def snap(drops: pd.Series, x: float, th: Thresholds) -> float:
    """The grid's version of a published point: the nearest swept magnitude if within tolerance, else x itself."""
    near = nearest(drops.index, x, th.match_rel_tol)
    return x if near is None else near


def pctl(m: float) -> str:
    return f"{m * 100:+.4g}%" if m < 0 else f"{m * 100:.4g}%"


def keeps(drops: pd.Series, lo: float, hi: float, th: Thresholds, what: str):
    """Check: every swept point in [lo, hi] (hi may be inf) keeps baseline (mean drop <= keep_pp)."""
    top = hi if math.isinf(hi) else snap(drops, hi, th)
    sel = drops[(drops.index >= snap(drops, lo, th) - 1e-9) & (drops.index <= top + 1e-9)]
    span = f"{pctl(lo)} and above" if math.isinf(hi) else f"{pctl(lo)}..{pctl(hi)}"
    if not len(sel):
        return None, f"no {what} points at {span}"
    return bool(sel.max() <= th.keep_pp), (f"worst drop {sel.max():.2f} pp at {what} {pctl(sel.idxmax())} "
                                           f"over {len(sel)} points at {span}")


def loses_outside(drops: pd.Series, edge: float, min_drop: float, strict: bool, th: Thresholds, what: str):
    """Check: every swept point at |magnitude| >= edge, on each side, drops by more than (strict) or at least
    min_drop."""
    results, texts = [], []
    for side, sel in (("-", drops[drops.index <= snap(drops, -edge, th) + 1e-9]),
                      ("+", drops[drops.index >= snap(drops, edge, th) - 1e-9])):
        if not len(sel):
            results.append(None)
            texts.append(f"no {what} points at {side}{edge * 100:.3g}% or beyond")
            continue
        least = sel.min()
        results.append(bool(least > min_drop if strict else least >= min_drop))
        texts.append(f"least drop {least:.2f} pp at {what} {pctl(sel.idxmin())} (|{what}| >= {edge * 100:.3g}%)")
    return results, texts


# ----------------------------------------------------------------------------- LEARN: test accuracy

def acc_stats(data: Runs, model: str) -> dict | None:
    """A model's test accuracies (%) from its home experiment: mean, std, n, its diverged runs, and the text that
    shows them ('ReLU 96.62 ± 0.17 (n=3, learn_distance_metrics)'); None when it has no complete run."""
    exp, x = model_accuracies(data, model)
    if exp is None or not len(x):
        return None
    mean, std, n = mean_std(x)
    note = divergence_note(data, exp, model)  # the mean is over the complete runs; the diverged are named beside
    return {"model": model, "exp": exp, "x": x, "mean": mean, "std": std, "n": n, "note": note,
            "text": f"{model} {mean:.2f}" + (f" ± {std:.2f}" if not math.isnan(std) else "")
                    + f" (n={n}, " + (f"{note}, " if note else "") + f"{exp})"}


def missing(data: Runs, *stats_and_names) -> list[str]:
    """The names of the absent models, each with its diverged runs when it has some: 'ReLU2 (5 of 5 diverged ...)'."""
    return [name + absent_note(data, name, home_experiment(name)) for s, name in stats_and_names if s is None]


def std_ratio(a: dict, ref: dict, th: Thresholds):
    """(check, evidence) that `a` is more variable than `ref`: std(a) >= variance_ratio x max(std(ref), floor_pp)."""
    if math.isnan(a["std"]) or math.isnan(ref["std"]):
        return None, "std needs >= 2 runs of each"
    ratio = a["std"] / max(ref["std"], th.floor_pp)
    return bool(ratio >= th.variance_ratio), f"std ratio {ratio:.1f}x"
