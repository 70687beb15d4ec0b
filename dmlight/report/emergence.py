"""Watch the code emerge: the sweeps a run made during training (perturbation.every_n_epochs=N: a coarse grid at
epochs 0, N, 2N, ..., the full grid at the end) as a heatmap of train accuracy over (epoch x magnitude) per model
and kind, and USE claim 4's sensitivity ratio at each epoch. Only runs with in-training sweeps (Runs.sweeps) enter
here; everything else in the report reads each run's final sweep."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dmlight.report.checks import mean_drops, sensitivity
from dmlight.report.figures import _colors, _plt, _save
from dmlight.published import LEARN_KINDS, USE_KINDS
from dmlight.report.groups import SPLIT, group_key, label
from dmlight.report.load import Runs, pct, read_sweep_file
from dmlight.report.tables import baseline_acc
from dmlight.report.thresholds import THRESHOLDS, Thresholds

GROUP = ["experiment", "model", "site"]
EMERGENCE_COLUMNS = GROUP + ["kind", "split", "epoch", "magnitude", "accuracy_pct_mean", "n"]
USED = {("offset", -0.10): "offset_minus_used", ("offset", 0.10): "offset_plus_used", ("scale", 0.10): "scale_used",
        ("clip", 0.50): "clip_used"}  # the swept magnitude each of claim 4's points was matched to
RATIO_COLUMNS = GROUP + ["epoch", "n", "distance_pp", "intensity_pp", "ratio", *USED.values()]
KINDS = ("baseline", *USE_KINDS, *LEARN_KINDS)  # table and panel order
IDENTITY = {"scale": 1.0, "clip": 1.0, "offset": 0.0, "clamp_min": 0.0, "clamp_max": 1.0}  # the unperturbed point
AXIS = {"scale": ("intensity", "scale (% of the pre-activation)"),
        "clip": ("intensity", "clip (% of the unit's range)"),
        "offset": ("distance", "offset (% of the unit's range)"),
        "clamp_min": ("distance-like", "clamp_min level (% of the layer's range)"),
        "clamp_max": ("intensity-like", "clamp_max level (% of the layer's range)")}
LOG_KINDS = ("scale", "clip")  # log-spaced grids: a log magnitude axis


def _kind_key(kind: str):
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), kind)


def _groups(frame: pd.DataFrame) -> list[tuple]:
    return sorted({tuple(g) for g in frame[GROUP].values.tolist()}, key=lambda g: (group_key(g), g[2]))


def _of(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of one (experiment, model, site)."""
    return frame[(frame.experiment == key[0]) & (frame.model == key[1]) & (frame.site == key[2])]


def _train(data: Runs) -> pd.DataFrame:
    s = data.sweeps
    return s[(s.split == SPLIT) & (s.unit == "all")]


def _coarse(rows: pd.DataFrame) -> pd.DataFrame:
    """One group's rows on the in-training grid: every in-training row, and of each run's final sweep its baseline
    and its points at the magnitudes swept during training (the coarse grid is part of the full one)."""
    last = rows.groupby("run").epoch.transform("max")
    during, final = rows[rows.epoch < last], rows[rows.epoch == last]
    out = [during, final[final.kind == "baseline"]]
    for kind, f in final[final.kind != "baseline"].groupby("kind"):
        grid = np.unique(during[during.kind == kind].magnitude.dropna())
        if not len(grid):
            continue
        m = f.magnitude.to_numpy(float)
        j = np.abs(m[:, None] - grid[None, :]).argmin(axis=1)
        hit = np.isclose(m, grid[j], rtol=1e-9, atol=1e-12)
        out.append(f[hit].assign(magnitude=grid[j][hit]))
    return pd.concat(out, ignore_index=True)


def emergence_table(data: Runs) -> pd.DataFrame:
    """Train accuracy (%) per (experiment, model, site, kind, epoch, magnitude) on the in-training grid: mean over
    the runs (n) that swept that point at that epoch; kind 'baseline' (no magnitude) is the unperturbed network."""
    out, t = [], _train(data)
    for key in _groups(t):
        g = _coarse(_of(t, key))
        agg = g.assign(acc=pct(g.accuracy)).groupby(["kind", "epoch", "magnitude"], dropna=False) \
            .agg(accuracy_pct_mean=("acc", "mean"), n=("acc", "count")).reset_index()
        out.append(agg.assign(**dict(zip(GROUP, key)), split=SPLIT))
    if not out:
        return pd.DataFrame(columns=EMERGENCE_COLUMNS)
    t = pd.concat(out, ignore_index=True)
    t["_order"] = [(group_key(g), g[2], _kind_key(k)) for *g, k in t[GROUP + ["kind"]].values.tolist()]
    t = t.sort_values(["_order", "epoch", "magnitude"]).reset_index(drop=True)
    return t[EMERGENCE_COLUMNS].astype({"epoch": "Int64", "n": int})


def sensitivity_table(data: Runs, th: Thresholds = THRESHOLDS) -> pd.DataFrame:
    """USE claim 4's ratio at every epoch of each group that swept scale, clip and offset during training, computed
    by checks.sensitivity as the claim computes it: each run's drop from its own unperturbed accuracy at that epoch,
    averaged over the runs (n), then the ratio; *_used: the swept magnitude each point was matched to (the nearest
    within match_rel_tol: on the coarse grid during training, the full one at the end). NaN where a point is not
    swept at that epoch."""
    rows = []
    t = _train(data)
    for key in _groups(t):
        g = _of(t, key)
        if not set(USE_KINDS) <= set(g.kind):
            continue
        for epoch, e in g.groupby("epoch"):
            s = sensitivity({kind: mean_drops(e, kind) for kind in USE_KINDS}, th)
            rows.append({**dict(zip(GROUP, key)), "epoch": epoch, "n": len(baseline_acc(e)),
                         **({"distance_pp": s.distance, "intensity_pp": s.intensity, "ratio": s.ratio,
                             **{USED[p]: m for p, m in s.used.items()}} if s else {})})
    return pd.DataFrame(rows, columns=RATIO_COLUMNS).astype({"epoch": "Int64"})


def emergence_tables(data: Runs, th: Thresholds = THRESHOLDS) -> dict:
    """{"emergence": ..., "sensitivity_ratio": ...} when some run swept during training, else {}."""
    if data.sweeps.empty:
        return {}
    return {"emergence": emergence_table(data), "sensitivity_ratio": sensitivity_table(data, th)}


# ----------------------------------------------------------------------------- figures

def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres: halfway between neighbours, half a step beyond the ends."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def _pct(v: float, kind: str) -> str:
    text = f"{v * 100:.4g}%"
    return "+" + text if kind == "offset" and v > 1e-12 else text


def _heatmap(ax, grid: pd.DataFrame, kind: str):
    """One panel: epochs (rows, one per sweep, bottom = first) x magnitudes, colour = accuracy %."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    x, epochs = grid.columns.to_numpy(float), grid.index.to_numpy()
    log = kind in LOG_KINDS and bool((x > 0).all())
    edges = 10 ** _edges(np.log10(x)) if log else _edges(x)
    mesh = ax.pcolormesh(edges, np.arange(len(epochs) + 1) - 0.5, np.ma.masked_invalid(grid.to_numpy(float)),
                         cmap="viridis", vmin=0, vmax=100)
    ax.set_facecolor("0.85")  # a cell no run swept
    if log:
        ax.set_xscale("log")
        ticks = [10.0 ** k for k in range(-4, 5) if edges[0] <= 10.0 ** k <= edges[-1]]
        ticks = ticks if len(ticks) >= 2 else x[::math.ceil(len(x) / 6)]  # less than a decade: the points swept
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _pct(v, kind)))
    ax.set_xlim(edges[0], edges[-1])
    if edges[0] <= IDENTITY.get(kind, math.nan) <= edges[-1]:
        ax.axvline(IDENTITY[kind], color="white", ls="--", lw=1)
    n, step = len(epochs), math.ceil(len(epochs) / 12)  # every step-th sweep labelled, and the last one
    shown = [i for i in range(0, n, step) if n - 1 - i >= step / 2] + [n - 1]
    ax.set_yticks(shown, [str(int(epochs[i])) for i in shown])
    family, xlabel = AXIS.get(kind, ("", kind))
    ax.set(title=f"{kind} ({family})" if family else kind, xlabel=xlabel, ylabel="epoch (training epochs completed)")
    return mesh


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def plot_emergence(table: pd.DataFrame, figures: Path) -> list[Path]:
    """figures/emergence_<model>.png, one per (experiment, model, site) (the name adds experiment and site when a
    model has several): a heatmap per kind of mean train accuracy over (epoch x magnitude), shared colour scale."""
    plt = _plt()
    t = table[table.kind != "baseline"].dropna(subset=["magnitude"])
    keys = _groups(t)
    experiments = {k[0] for k in keys}
    out = []
    for key in keys:
        g = _of(t, key)
        kinds = sorted(g.kind.unique(), key=_kind_key)
        n_epochs = g.epoch.nunique()
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds) + 1.2, min(9.0, max(3.8, 2.6 + 0.22 * n_epochs))),
                                 squeeze=False, constrained_layout=True)
        for ax, kind in zip(axes[0], kinds):
            grid = g[g.kind == kind].pivot(index="epoch", columns="magnitude", values="accuracy_pct_mean")
            mesh = _heatmap(ax, grid.sort_index().sort_index(axis=1), kind)
        fig.colorbar(mesh, ax=axes[0].tolist(), label=f"{SPLIT} accuracy (%), mean over seeds", shrink=0.9)
        n = f"{g.n.min()}" if g.n.min() == g.n.max() else f"{g.n.min()}-{g.n.max()}"
        over = "one run" if n == "1" else f"mean over {n} seeds"
        fig.suptitle(f"{label(*key, experiments)}: {SPLIT} accuracy under perturbation as training goes\n"
                     f"{over}; bottom row = before training, top row = final sweep; dashed line = unperturbed network")
        several = sum(k[1] == key[1] for k in keys) > 1
        out.append(_save(fig, figures, "emergence_" + _slug("_".join(key) if several else key[1])))
    return out


def plot_sensitivity(table: pd.DataFrame, figures: Path, th: Thresholds = THRESHOLDS) -> list[Path]:
    """figures/sensitivity_ratio.png: USE claim 4's ratio vs epoch, one line per model, the claim's threshold
    dashed; symlog y (log above 1, linear through 0, where an untrained network's ratio may lie)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter
    t = table.dropna(subset=["ratio"])
    if not len(t):
        return []
    plt = _plt()
    keys = _groups(t)
    experiments, colors = {k[0] for k in keys}, _colors(keys)
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for key in keys:
        d = _of(t, key).sort_values("epoch")
        n = f"{d.n.min()}" if d.n.min() == d.n.max() else f"{d.n.min()}-{d.n.max()}"
        ax.plot(d.epoch.astype(float), d.ratio, "-o", ms=3.5, lw=1.6, color=colors[key],
                label=f"{label(*key, experiments)} (n={n})")
        ax.plot(float(d.epoch.iloc[-1]), d.ratio.iloc[-1], "D", ms=9, mfc="none", color=colors[key])
    ax.plot([], [], "D", ms=9, mfc="none", color="0.3", label="final sweep (full grid): the claim's own number")
    ax.axhline(th.sensitivity_ratio, color="k", ls="--", lw=1,
               label=f"USE claim 4 needs at least this ({th.named('sensitivity_ratio')})")
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    bottom, top = min(0.0, 1.5 * float(t.ratio.min())) - 0.2, 1.6 * max(float(t.ratio.max()), th.sensitivity_ratio)
    ax.set_ylim(bottom, top)
    steps = [m * 10.0 ** k for k in range(7) for m in (1, 3)]  # 1, 3, 10, 30, ...: labels at every half decade
    ax.yaxis.set_major_locator(FixedLocator([-v for v in steps if -v >= bottom] + [0.0] + [v for v in steps if v <= top]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(xlabel="epoch (training epochs completed)", ylabel="offset drop / intensity drop (x)")
    ax.set_title("Offset vs intensity sensitivity during training (USE claim 4's ratio)\n"
                 f"worst drop at offset ±10% / max(drop at scale 10%, clip 50%, {th.named('floor_pp')} pp); "
                 "drops averaged over seeds, then the ratio", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return [_save(fig, figures, "sensitivity_ratio")]


def draw_emergence(tables: dict, figures: Path, th: Thresholds = THRESHOLDS) -> list[Path]:
    if "emergence" not in tables:
        return []
    return plot_emergence(tables["emergence"], figures) + plot_sensitivity(tables["sensitivity_ratio"], figures, th)


# ----------------------------------------------------------------------------- report.md

def _crossing(d: pd.DataFrame, th: Thresholds) -> str:
    """'8.8x at epoch 400, at or above the threshold from epoch 150 on' for one model's ratio rows."""
    d = d.dropna(subset=["ratio"]).sort_values("epoch")
    if not len(d):
        return "not measurable (a point of the claim was not swept)"
    last = d.iloc[-1]
    text = f"{last.ratio:.1f}x at epoch {int(last.epoch)}"
    below = d[d.ratio < th.sensitivity_ratio]
    if not len(below):
        return text + ", at or above the threshold at every sweep"
    after = d[d.epoch > below.epoch.max()]
    return text + (f", at or above the threshold from epoch {int(after.epoch.iloc[0])} on" if len(after)
                   else ", below the threshold")


def markdown_section(tables: dict, fig: dict, th: Thresholds = THRESHOLDS) -> list[str]:
    """report.md's 'How the code emerges during training'; [] when no run swept during training."""
    if "emergence" not in tables:
        return []
    lines = ["## How the code emerges during training", "",
             "Runs made with `perturbation.every_n_epochs=N` also swept during training, on a coarser grid, at epochs "
             "0 (untrained), N, 2N, ...; every other section reads only each run's final sweep. "
             "`tables/emergence.csv`, `tables/sensitivity_ratio.csv`.", ""]
    heat = [k for k in fig if k.startswith("emergence_")]
    if heat:
        lines += ["One figure per model, one panel per kind: rows are training epochs (bottom: before training; top: "
                  "the final sweep at the same magnitudes), columns are magnitudes, colour is mean train accuracy over "
                  "seeds; the dashed line marks the unperturbed network. Follow the bright (accurate) region up the "
                  "rows: a distance code shows as the offset panel's bright band narrowing around 0 while scale "
                  "stays bright from 10% up and clip from 50% up (LEARN's clamp_min and clamp_max panels read alike: "
                  "how far from the dashed edge accuracy holds).", ""]
        lines += [f"![{k}]({fig[k]})\n" for k in heat]
    if "sensitivity_ratio" in fig:
        t = tables["sensitivity_ratio"]
        keys = _groups(t)
        found = "; ".join(f"{label(*k, {g[0] for g in keys})} {_crossing(_of(t, k), th)}" for k in keys)
        lines += [f"USE claim 4's ratio at each epoch, computed as the claim computes it (each run's drop from its own "
                  f"unperturbed accuracy at that epoch, averaged over seeds, then the ratio); the claim needs the "
                  f"final value at or above the dashed line ({th.named('sensitivity_ratio')}). The epoch where a line "
                  f"crosses it is when offsets start to hurt far more than rescaling. During training each point is "
                  f"the coarse grid's nearest (within {th.named('match_rel_tol')}; `tables/sensitivity_ratio.csv` "
                  f"names it), so the last step, onto the full grid, can jump. Found: {found}.", "",
                  f"![sensitivity ratio]({fig['sensitivity_ratio']})", ""]
    return lines


# ----------------------------------------------------------------------------- a DistanceProbe's own file

def plot_probe_file(path: str | Path, figures: str | Path, th: Thresholds = THRESHOLDS) -> list[Path]:
    """The heatmaps and the ratio curve of a DistanceProbe's probe.csv (one run, any model), one group per probed
    layer, drawn as the report draws a dmlight model's; needs sweeps at two epochs or more (every_n_epochs).

    Example:
        >>> plot_probe_file("outputs/probe_example/probe.csv", "outputs/probe_example/figures")  # doctest: +SKIP
    """
    frame = read_sweep_file(Path(path), keys=("layer",))
    frame = frame.assign(experiment="probe", model=frame.layer, site="pre_activation", run=frame.layer)
    if frame.epoch.nunique() < 2:
        return []
    empty = pd.DataFrame()
    tables = emergence_tables(Runs(empty, empty, empty, empty, empty, sweeps=frame), th)
    return draw_emergence(tables, Path(figures), th)
