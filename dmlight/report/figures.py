"""The report's figures, as PNG and PDF: accuracy under perturbation, final test accuracy per model, learning curves.
matplotlib is imported only when a figure is drawn, and draws to files only."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from dmlight.report.groups import SPLIT, experiment_key, group_key, label, model_key
from dmlight.report.load import pct


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
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def plot_perturbation(curves: pd.DataFrame, figures: Path) -> list[Path]:
    """figures/perturbation.png: train accuracy vs magnitude, intensity (scale, clip; log x) and distance (offset)
    panels, one line per model with its 95% CI band; figures/clamp.png likewise when a clamp sweep ran."""
    plt = _plt()
    out = []
    c = curves[(curves.split == SPLIT) & curves.magnitude.notna()]
    groups = sorted({tuple(g) for g in c[["experiment", "model", "site"]].values.tolist()}, key=group_key)
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
                            label=f"{label(*g, experiments)} {kind}" if len(styles) > 1 else label(*g, experiments))
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
    for exp in sorted(metrics.experiment.unique(), key=experiment_key):
        m = metrics[metrics.experiment == exp]
        models = sorted(m.model.unique(), key=model_key)
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
                name = model if col != "test_acc" else None
                ax.plot(agg.index, agg["mean"], style, color=colors[model], lw=1.3, label=name)
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
    groups = sorted({tuple(g) for g in runs[["experiment", "model"]].values.tolist()}, key=group_key)
    if not groups:
        return []
    experiments = sorted({g[0] for g in groups}, key=experiment_key)
    colors = _colors(experiments)
    values = [pct(runs[(runs.experiment == e) & (runs.model == m)].test_acc.dropna()).values for e, m in groups]
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


def draw_all(tables: dict, data, figures: Path) -> list[Path]:
    """Every figure the report shows, in report.md's order."""
    return (plot_perturbation(tables["perturbation_curves"], figures) + plot_test_accuracy(data.runs, figures)
            + plot_learning_curves(data.metrics, figures))
