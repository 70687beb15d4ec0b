"""Beyond the papers: where does the distance code hold? The study's verdicts (docs/study.md).

Per setting (experiment, model, data, preprocessing, variant) and layer, from each seed's final sweep on the
training set (Runs.layers):

- each kind's drop (pp) from the seed's own unperturbed accuracy at an equal size of change (study_change),
  linearly interpolated along the kind's points ordered by their size of change, each side of the kind's
  identity point on its own (a shrinking and a growing scale are two curves); a side that never reaches that
  size gives no number;
- the distance drop: the largest of the distance kinds' (offset; clamp_min at a post-activation site), the
  intensity drop: the largest of the intensity kinds' (unit_scale, clip; clamp_max), *without* a uniform scale of
  a positively homogeneous activation (ReLU, Abs, leaky ReLU: act(s h) = s act(h), so the next layer sees the
  same pattern, scaled; how much the argmax moves is then decided by the later layers' biases, not by the code).
  A uniform scale of GELU, tanh or sigmoid counts;
- the ratio distance drop / intensity drop (each at least floor_pp), its 95% interval over seeds (Student's t on
  the log ratio), and a verdict, in this order: diverged (a seed's loss became non-finite), not trained (mean
  train accuracy below study_floor_pct), algebra only (the only intensity evidence is a guaranteed uniform
  scale), no verdict (a drop that no kind reached), insensitive (both mean drops below keep_pp: at that size
  of change neither code moves the accuracy), distance-coded (interval above study_ratio),
  intensity-coded (below 1/study_ratio), mixed. With one seed the point estimate decides.

`uniform_ratio` is the same ratio with the uniform scale as the only intensity kind: the papers' test, beside the
controlled one. The LEARN pairs (mlp2: the intensity code; mlp2_neg: the distance code) are compared by their
test accuracy: Student's t-test and Cohen's d, as the report's LEARN tables.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dmlight import stats
from dmlight.published import KIND_CODE
from dmlight.report.load import Runs
from dmlight.report.thresholds import THRESHOLDS, Thresholds

STUDY_EXPERIMENTS = ("study", "study_learn")  # conf/experiment/study*.yaml's experiment names
HOMOGENEOUS = ("relu", "abs", "leaky_relu")  # positively homogeneous: act(s h) = s act(h) for s > 0
IDENTITY = {"scale": 1.0, "unit_scale": 1.0, "clip": 1.0, "offset": 0.0, "clamp_min": 0.0, "clamp_max": 1.0}
SETTING_KEYS = ["experiment", "model", "activation", "data", "preprocess", "variant"]
STUDY_COLUMNS = ["setting", *SETTING_KEYS, "layer", "seeds", "baseline_pct", "distance_drop_pp", "intensity_drop_pp",
                 "intensity_kinds", "ratio", "ratio_lo", "ratio_hi", "uniform_ratio", "verdict", "why"]
LEARN_COLUMNS = ["activation", "data", "preprocess", "variant", "intensity_model", "distance_model", "n_intensity",
                 "n_distance", "intensity_test_pct", "distance_test_pct", "diff_pp", "t", "p", "cohens_d", "verdict"]
VERDICT_MARK = {"distance-coded": "D", "intensity-coded": "I", "mixed": "M", "not trained": "NT", "diverged": "X",
                "algebra only": "A", "no verdict": "?", "insensitive": "0"}


def drop_at(points: pd.DataFrame, base: float, change: float) -> float:
    """The drop (pp) from `base` at size of change `change` along one side of a kind: `points` with columns
    change and accuracy (fractions); NaN when the side never reaches `change`.

        >>> side = pd.DataFrame({"change": [0.2, 0.6], "accuracy": [0.9, 0.5]})
        >>> round(drop_at(side, 0.95, 0.4), 6), drop_at(side, 0.95, 0.7)
        (25.0, nan)
    """
    pts = points.dropna(subset=["change", "accuracy"]).sort_values("change")
    if pts.empty or pts.change.max() < change:
        return math.nan
    xs = np.concatenate([[0.0], pts.change.to_numpy(float)])
    ys = np.concatenate([[base], pts.accuracy.to_numpy(float)])
    return 100.0 * (base - float(np.interp(change, xs, ys)))


def kind_drop(rows: pd.DataFrame, kind: str, base: float, change: float) -> float:
    """The larger drop of a kind's two sides (below and above its identity point) at `change`; NaN if neither
    reaches it."""
    k = rows[rows.kind == kind]
    sides = [k[k.magnitude < IDENTITY[kind]], k[k.magnitude > IDENTITY[kind]]]
    drops = [d for d in (drop_at(s, base, change) for s in sides) if not math.isnan(d)]
    return max(drops) if drops else math.nan


def guaranteed(kind: str, activation: str) -> bool:
    """A result the algebra guarantees: a uniform scale of a positively homogeneous activation."""
    return kind == "scale" and str(activation) in HOMOGENEOUS


def seed_evidence(rows: pd.DataFrame, activation: str, th: Thresholds = THRESHOLDS) -> dict:
    """One seed's drops at one layer, from its final sweep's train rows (kind, magnitude, accuracy, change)."""
    base = float(rows[rows.kind == "baseline"].accuracy.iloc[0])
    kinds = [k for k in rows.kind.unique() if k in KIND_CODE]
    drops = {k: kind_drop(rows, k, base, th.study_change) for k in kinds}
    distance = [drops[k] for k in kinds if KIND_CODE[k] == "distance"]
    counted = [k for k in kinds if KIND_CODE[k] == "intensity" and not guaranteed(k, activation)]
    intensity = [drops[k] for k in counted]
    return {"baseline": base, "distance": _nanmax(distance), "intensity": _nanmax(intensity),
            "uniform": drops.get("scale", math.nan), "counted": counted,
            "algebra_only": not counted and any(guaranteed(k, activation) for k in kinds)}


def _nanmax(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def _log_ratio(d: float, i: float, floor: float) -> float:
    return math.log(max(d, floor) / max(i, floor)) if not (math.isnan(d) or math.isnan(i)) else math.nan


def verdict(evidence: list[dict], diverged: int, th: Thresholds = THRESHOLDS) -> tuple[str, str, tuple]:
    """(verdict, why, (ratio, lo, hi)) of a setting's layer from its seeds' evidence (seed_evidence) and its count of
    diverged seeds. The rule and its order: the module docstring.

        >>> ok = {"baseline": 0.97, "distance": 30.0, "intensity": 2.0, "counted": ["clip"], "algebra_only": False}
        >>> verdict([ok, {**ok, "distance": 25.0}], diverged=0)[0]
        'distance-coded'
    """
    nan3 = (math.nan, math.nan, math.nan)
    if diverged:
        return "diverged", f"{diverged} seed(s) diverged (non-finite loss)", nan3
    if not evidence:
        return "no verdict", "no complete seed with a sweep", nan3
    acc = 100 * float(np.mean([e["baseline"] for e in evidence]))
    if acc < th.study_floor_pct:
        return "not trained", f"train accuracy {acc:.1f}% < {th.named('study_floor_pct')}%", nan3
    if all(e["algebra_only"] for e in evidence):
        return "algebra only", ("the only intensity test is a uniform scale of a homogeneous activation, which the "
                                "algebra decides; sweep unit_scale or clip"), nan3
    logs = [_log_ratio(e["distance"], e["intensity"], th.floor_pp) for e in evidence]
    logs = [v for v in logs if not math.isnan(v)]
    if not logs:
        return "no verdict", f"no distance or intensity kind reached a change of {th.study_change}", nan3
    d, i = (stats.mean_std([e[k] for e in evidence])[0] for k in ("distance", "intensity"))
    if d < th.keep_pp and i < th.keep_pp:
        return "insensitive", (f"distance {d:.2f} pp and intensity {i:.2f} pp, both < {th.named('keep_pp')} pp at a "
                               f"change of {th.study_change}"), nan3
    m, lo, hi = stats.mean_ci(logs)
    ratio = tuple(math.exp(v) if not math.isnan(v) else math.nan for v in (m, lo, hi))
    low, high = (ratio[1], ratio[2]) if len(logs) > 1 else (ratio[0], ratio[0])
    if low > th.study_ratio:
        return "distance-coded", f"ratio CI above {th.named('study_ratio')}", ratio
    if high < 1 / th.study_ratio:
        return "intensity-coded", f"ratio CI below 1/{th.study_ratio:g}", ratio
    return "mixed", f"ratio CI overlaps [1/{th.study_ratio:g}, {th.study_ratio:g}]", ratio


def setting_label(key: dict) -> str:
    parts = [key["model"], f"{key['data']}-{key['preprocess']}"]
    if key.get("variant"):
        parts.append(str(key["variant"]))
    return " ".join(parts)


def _settings(data: Runs, experiments) -> pd.DataFrame:
    """The runs of `experiments`, complete (run >= 0) and diverged (run -1: a setting whose seeds all diverged
    still gets its row)."""
    runs = data.runs[data.runs.experiment.isin(experiments)]
    div = data.diverged[data.diverged.experiment.isin(experiments)].assign(run=-1)
    both = pd.concat([runs, div.reindex(columns=runs.columns)], ignore_index=True) if len(div) else runs.copy()
    both["variant"] = both.variant.fillna("").astype(str)
    return both


def study_table(data: Runs, th: Thresholds = THRESHOLDS, experiments=STUDY_EXPERIMENTS) -> pd.DataFrame:
    """One row per setting and layer of the study's runs: drops at study_change, ratio with its 95% CI, verdict."""
    runs = _settings(data, experiments)
    if runs.empty:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    layers = data.layers[(data.layers.split == "train") & (data.layers.unit == "all")]
    out = []
    for key_values, g in runs.groupby(SETTING_KEYS, dropna=False):
        key = dict(zip(SETTING_KEYS, key_values))
        n_div = int((g.run == -1).sum())
        rows = layers[layers.run.isin(g.run[g.run >= 0])]
        for layer in sorted(rows.layer.unique(), key=lambda n: (n != "hidden", n)) or ["hidden"]:
            evidence = [seed_evidence(r, key["activation"], th) for _, r in rows[rows.layer == layer].groupby("run")]
            v, why, (ratio, lo, hi) = verdict(evidence, n_div, th)
            uniform = [_log_ratio(e["distance"], e["uniform"], th.floor_pp) for e in evidence]
            uniform = [u for u in uniform if not math.isnan(u)]
            out.append({"setting": setting_label(key), **key, "layer": layer, "seeds": len(evidence),
                        "baseline_pct": 100 * np.mean([e["baseline"] for e in evidence]) if evidence else math.nan,
                        "distance_drop_pp": stats.mean_std([e["distance"] for e in evidence])[0],
                        "intensity_drop_pp": stats.mean_std([e["intensity"] for e in evidence])[0],
                        "intensity_kinds": "+".join(sorted({k for e in evidence for k in e["counted"]})),
                        "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi,
                        "uniform_ratio": math.exp(np.mean(uniform)) if uniform else math.nan,
                        "verdict": v, "why": why})
    return pd.DataFrame(out, columns=STUDY_COLUMNS)


def learn_pairs(data: Runs, th: Thresholds = THRESHOLDS, experiments=("study_learn",)) -> pd.DataFrame:
    """Per activation (and data, preprocessing, variant): the intensity code (mlp2) against the distance code
    (mlp2_neg) by test accuracy: t-test, Cohen's d, and which wins (|diff| > same_pp and p < 0.05)."""
    runs = _settings(data, experiments)
    runs = runs[runs.run >= 0]
    out = []
    for (act, dname, pre, variant), g in runs.groupby(["activation", "data", "preprocess", "variant"], dropna=False):
        a, b = g[g.arch == "mlp2"], g[g.arch == "mlp2_neg"]
        if a.empty or b.empty:
            continue
        x, y = 100 * b.test_acc.to_numpy(float), 100 * a.test_acc.to_numpy(float)
        t, _, p = stats.independent_ttest(x, y)
        diff = float(x.mean() - y.mean())
        win = "distance code better" if diff > 0 else "intensity code better"
        v = win if abs(diff) > th.same_pp and not math.isnan(p) and p < 0.05 else "no clear difference"
        out.append({"activation": act, "data": dname, "preprocess": pre, "variant": variant,
                    "intensity_model": a.model.iloc[0], "distance_model": b.model.iloc[0], "n_intensity": len(a),
                    "n_distance": len(b), "intensity_test_pct": float(y.mean()), "distance_test_pct": float(x.mean()),
                    "diff_pp": diff, "t": t, "p": p, "cohens_d": stats.cohens_d(x, y), "verdict": v})
    return pd.DataFrame(out, columns=LEARN_COLUMNS)
