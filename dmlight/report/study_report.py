"""The report's "Beyond the papers" section: the study's tables (dmlight.report.study), a heatmap of its
verdicts (setting x layer, colour = log10 of the distance/intensity ratio, a mark per verdict), accuracy against
size of change for the kinds of a few settings (the picture that makes the controls visible), and the text."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dmlight.published import KIND_CODE
from dmlight.report.figures import _plt, _save
from dmlight.report.load import Runs
from dmlight.report.markdown import md_table
from dmlight.report.study import IDENTITY, VERDICT_MARK, guaranteed, learn_pairs, study_table
from dmlight.report.thresholds import THRESHOLDS, Thresholds

KIND_STYLE = {"offset": ("tab:red", "-"), "clamp_min": ("tab:red", "-"), "unit_scale": ("tab:blue", "-"),
              "clip": ("tab:green", "-"), "clamp_max": ("tab:green", "-"), "scale": ("tab:gray", "--")}


def study_tables(data: Runs, th: Thresholds = THRESHOLDS) -> dict[str, pd.DataFrame]:
    """tables/study.csv (a row per setting and layer) and tables/study_learn.csv (the LEARN pairs)."""
    return {"study": study_table(data, th), "study_learn": learn_pairs(data, th)}


def plot_verdicts(study: pd.DataFrame, figures: Path, th: Thresholds) -> list[Path]:
    """study_verdicts.png: settings (rows) x layers (columns), colour log10(ratio), the verdict's mark in the cell."""
    if study.empty:
        return []
    plt = _plt()
    settings = list(dict.fromkeys(study.setting))
    layers = sorted(study.layer.unique(), key=lambda n: (n != "hidden", n))
    grid = np.full((len(settings), len(layers)), np.nan)
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(layers), 1.2 + 0.32 * len(settings)))
    for r in study.itertuples():
        i, j = settings.index(r.setting), layers.index(r.layer)
        if not math.isnan(r.ratio) and r.verdict in ("distance-coded", "intensity-coded", "mixed"):
            grid[i, j] = math.log10(r.ratio)
        else:  # a layer with no verdict: grey (a layer the setting does not have stays white)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.88"))
        ax.text(j, i, VERDICT_MARK.get(r.verdict, "?"), ha="center", va="center", fontsize=8)
    top = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    image = ax.imshow(grid, cmap="RdBu", vmin=-top, vmax=top, aspect="auto")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_yticks(range(len(settings)), settings, fontsize=7)
    fig.colorbar(image, ax=ax, label="log10(distance drop / intensity drop)")
    ax.set_title(f"Beyond the papers: verdicts at a change of {th.study_change:g}\n"
                 "D distance-coded, I intensity-coded, M mixed, 0 insensitive, NT not trained, X diverged, "
                 "A algebra only", fontsize=8)
    return [_save(fig, figures, "study_verdicts")]


def _showcase(study: pd.DataFrame) -> list[str]:
    """Up to three settings for the change plot: the study point's ReLU, tanh and sigmoid when present."""
    one_layer = study[(study.layer == "hidden") & (study.variant == "")]
    one_layer = one_layer.assign(far=(one_layer.data != "mnist5k") * 2 + (one_layer.preprocess != "standardize")
                                 + one_layer.model.str.contains("x") * 4 + (one_layer.experiment != "study") * 8
                                 ).sort_values("far", kind="stable")
    picks = [s for act in ("relu", "tanh", "sigmoid", "abs", "gelu")
             for s in one_layer[one_layer.activation == act].setting.head(1)]
    return (picks or list(one_layer.setting.head(1)) or list(study.setting.head(1)))[:3]


def plot_change(study: pd.DataFrame, data: Runs, figures: Path, th: Thresholds) -> list[Path]:
    """study_change.png: accuracy against size of change for every kind of a few settings (train, layer hidden,
    mean over seeds at each magnitude); dashed: a uniform scale the algebra decides for a homogeneous activation."""
    picks = _showcase(study)
    if not picks:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.4), squeeze=False)
    for ax, name in zip(axes[0], picks):
        row = study[(study.setting == name) & (study.layer == "hidden")].iloc[0]
        runs = data.runs[(data.runs.experiment == row.experiment) & (data.runs.model == row.model)
                         & (data.runs.variant.fillna("").astype(str) == row.variant)
                         & (data.runs.data == row.data) & (data.runs.preprocess == row.preprocess)].run
        rows = data.layers[data.layers.run.isin(runs) & (data.layers.layer == "hidden")
                           & (data.layers.split == "train") & (data.layers.unit == "all")]
        for kind in [k for k in KIND_STYLE if k in set(rows.kind)]:
            k = rows[rows.kind == kind]
            for side in (k[k.magnitude < IDENTITY[kind]], k[k.magnitude > IDENTITY[kind]]):
                curve = side.groupby("magnitude")[["change", "accuracy"]].mean().sort_values("change")
                if curve.empty:
                    continue
                color, style = KIND_STYLE[kind]
                algebra = guaranteed(kind, row.activation)
                ax.plot(curve.change, 100 * curve.accuracy, color=color, ls="--" if algebra else style, lw=1.2,
                        label=f"{kind} ({KIND_CODE[kind]}{', algebra' if algebra else ''})")
        ax.axvline(th.study_change, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")  # changes of 0 (identity points) are not drawn
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set(title=f"{name}: {row.verdict}", xlabel="size of change (mean relative, layer output)",
               ylabel="train accuracy (%)")
        handles, labels = ax.get_legend_handles_labels()
        keep = dict(zip(labels, handles))
        ax.legend(keep.values(), keep.keys(), fontsize=6)
    fig.tight_layout()
    return [_save(fig, figures, "study_change")]


def draw_study(tables: dict, data: Runs, figures: Path, th: Thresholds = THRESHOLDS) -> list[Path]:
    study = tables.get("study", pd.DataFrame())
    if study is None or study.empty:
        return []
    return plot_verdicts(study, figures, th) + plot_change(study, data, figures, th)


def _fmt(x, nd: int = 1) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def study_section(tables: dict, fig: dict, th: Thresholds = THRESHOLDS) -> list[str]:
    """The markdown of "Beyond the papers" (nothing when no study run was found)."""
    study, pairs = tables.get("study"), tables.get("study_learn")
    if (study is None or study.empty) and (pairs is None or pairs.empty):
        return []
    lines = ["## Beyond the papers: where does the distance code hold?", "",
             "Both papers ask their question on one shape (one hidden layer of 128, full-batch SGD, ReLU or Abs, "
             "MNIST). The study asks it across depth, width, activation, optimizer, data and preprocessing, at every "
             f"hidden layer, comparing kinds at an equal size of change ({th.named('study_change')}: the mean "
             "relative change of the layer's output) and leaving out what the algebra guarantees (a uniform scale "
             "of ReLU, Abs or leaky ReLU). Rules and thresholds: `dmlight/report/study.py`, docs/study.md. "
             "`tables/study.csv`, `tables/study_learn.csv`.", ""]
    if study is not None and not study.empty:
        for name in ("study_verdicts", "study_change"):
            if name in fig:
                lines += [f"![{name}]({fig[name]})", ""]
        holds = study[study.verdict == "distance-coded"]
        fails = study[study.verdict.isin(["intensity-coded", "mixed", "insensitive"])]
        out = study[~study.index.isin(holds.index) & ~study.index.isin(fails.index)]
        lines += [f"**Where the papers' conclusion holds** (distance-coded): {len(holds)} of {len(study)} setting "
                  "layers" + (": " + "; ".join(f"{r.setting} {r.layer}" for r in holds.itertuples()) if len(holds) else "")
                  + ".", "",
                  f"**Where it fails** (intensity-coded, mixed, or insensitive): {len(fails)}" +
                  (": " + "; ".join(f"{r.setting} {r.layer} ({r.verdict})" for r in fails.itertuples()) if len(fails)
                   else "") + ".", "",
                  f"**No verdict** (not trained, diverged, algebra only, no evidence): {len(out)}" +
                  (": " + "; ".join(f"{r.setting} {r.layer} ({r.verdict})" for r in out.itertuples()) if len(out)
                   else "") + ".", ""]
        shown = pd.DataFrame({
            "setting": study.setting, "layer": study.layer, "seeds": study.seeds,
            "train %": [_fmt(v) for v in study.baseline_pct],
            "distance drop pp": [_fmt(v) for v in study.distance_drop_pp],
            "intensity drop pp": [_fmt(v) for v in study.intensity_drop_pp], "intensity kinds": study.intensity_kinds,
            "ratio [95% CI]": [f"{_fmt(r, 2)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]" if not math.isnan(r) else ""
                               for r, lo, hi in zip(study.ratio, study.ratio_lo, study.ratio_hi)],
            "uniform-scale ratio": [_fmt(v, 2) for v in study.uniform_ratio], "verdict": study.verdict})
        lines += [md_table(shown), ""]
    if pairs is not None and not pairs.empty:
        lines += ["LEARN's question beyond ReLU and Abs: the distance code (mlp2_neg) against the intensity code "
                  f"(mlp2), test accuracy, Student's t-test and Cohen's d; 'better' = |diff| > {th.named('same_pp')} pp "
                  "and p < 0.05.", "",
                  md_table(pairs[["activation", "data", "preprocess", "variant", "intensity_model", "distance_model",
                                  "intensity_test_pct", "distance_test_pct", "diff_pp", "p", "cohens_d", "verdict"]]
                           .round(3).fillna("").astype(str)), ""]
    return lines
