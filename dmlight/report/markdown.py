"""report.md: the scorecard, every table, every figure and the thresholds, on one page."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dmlight.report.checks import NOT_REPLICATED, NOT_RUN, NOT_RUN_DIVERGED, REPLICATED
from dmlight.report.emergence import markdown_section
from dmlight.report.groups import SPLIT, USE_KINDS, group_key, label, setting, warnings
from dmlight.report.load import Runs
from dmlight.report.thresholds import Thresholds


def num(x, nd: int = 2) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return ""
    return f"{x:.{nd}f}" if isinstance(x, (float, np.floating)) else str(x)


def integer(x) -> str:
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
                                        key=lambda kv: group_key(kv[0])):
        name = label(exp, model, site, experiments)
        offset = g.kind.iloc[0] == "offset"
        col = pd.DataFrame({
            "point": ["baseline" if math.isnan(p) else f"{p:+g}%" if offset else f"{p:g}%" for p in g.point_pct],
            f"{name} ours": [num(v) + ("" if n else " (none)") for v, n in zip(g.mean_pct, g.n)],
            f"{name} published": [num(v) for v in g.published_pct],
            f"{name} used": ["" if math.isnan(m) else f"{m * 100:+.4g}%" if offset else f"{m * 100:.4g}%"
                             for m in g.magnitude_used],
            f"{name} t": [num(v) for v in g.t],
            f"{name} p": [_p(v) for v in g.p]}).set_index("point")
        columns.append(col)
    # Rows in the paper's order (baseline first); a model missing a point gets empty cells.
    order = list(dict.fromkeys(lab for col in columns for lab in col.index))
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
        "diff pp": [num(v) for v in t.diff_pp], "t": [num(v) for v in t.t],
        "dof": [num(v, 0) for v in t.dof], "p": [_p(v) for v in t.p], "d": [num(v) for v in t.d],
        "published t": [num(v) for v in t.published_t], "published p": t.published_p,
        "published abs d": [num(v) for v in t.published_abs_d],
        "t implied by published mean ± std": [num(v, 1) for v in t.published_means_imply_t]})


def _md_units(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "experiment": t.experiment, "model": t.model, "layer": t.layer, "split": t.split, "runs": t.n_runs,
        "units": t.units, "dead": [_pm(m, s) for m, s in zip(t.dead_mean, t.dead_std)],
        "dead %": [num(v, 1) for v in t.dead_pct_mean],
        "rare (<1% of samples)": [_pm(m, s) for m, s in zip(t.rare_mean, t.rare_std)], "published": t.published})


def status_counts(card: pd.DataFrame) -> str:
    """'8 replicated, 1 not replicated, 1 not run, 0 not run: diverged'."""
    counts = card.status.value_counts()
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in (REPLICATED, NOT_REPLICATED, NOT_RUN, NOT_RUN_DIVERGED))


def thresholds_table(th: Thresholds) -> pd.DataFrame:
    """report.md's Notes: every threshold with its value and why, from `Thresholds` (the one place they live)."""
    rows = th.rows()
    return pd.DataFrame({"threshold": [n for n, _, _ in rows], "value": [str(v) for _, v, _ in rows],
                         "why": [why for _, _, why in rows]})


def _head(dirs, data: Runs) -> list[str]:
    lines = ["# dmlight report", "",
             f"Runs read from: {', '.join(f'`{d}`' for d in dirs)}. "
             f"**{len(data.runs)} complete runs**, {len(data.incomplete)} incomplete "
             f"(listed at the end, counted nowhere), {len(data.diverged)} diverged (finished with a non-finite "
             "training loss: counted beside each mean, never in one). "
             "Accuracies in %, differences in percentage points (pp). Every table is also in `tables/` as CSV.", ""]
    for w in warnings(data):
        lines += [f"> **Warning:** {w}", ""]
    return lines


def _scorecard(card: pd.DataFrame) -> list[str]:
    return ["## Scorecard", "",
            f"{status_counts(card)} "
            "(`scorecard.csv`). A claim is replicated when every check ran and passed; it is not run: diverged "
            "when a model it needs diverged on every run. Thresholds are listed under Notes.", "",
            md_table(pd.DataFrame({"paper": card.paper, "claim": card.claim_id.astype(str), "statement": card.claim,
                                   "status": ["**" + s + "**" for s in card.status], "evidence": card.evidence})), ""]


def _use(tables: dict, fig: dict) -> list[str]:
    lines = ["## USE: perturbation (Neural Networks Use Distance Metrics)", ""]
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
    return lines


def _learn(tables: dict, fig: dict) -> list[str]:
    lines = ["## LEARN: test accuracy (Neural Networks Learn Distance Metrics)", "",
             "Mean ± std over the n complete runs (diverged runs counted beside), 95% CI by Student t (n-1 dof, SEM); "
             "published beside (the paper's discussion quotes other values for some models).", "",
             md_table(_md_learn(tables["learn_accuracy"])), ""]
    if "test_accuracy" in fig:
        lines += [f"![test accuracy]({fig['test_accuracy']})", ""]
    lines += ["### Pairwise tests", "", "Independent two-sample t-test with pooled variance (dof n_a + n_b - 2) and "
              "Cohen's d (pooled sd), for a - b; published |d|. The last column is the t that the published "
              "means ± std imply with 20 runs each, to show where the paper's t-tests and its table disagree.", "",
              md_table(_md_pairs(tables["learn_pairs"])), ""]
    return lines


def _diverged(data: Runs, tables: dict) -> list[str]:
    lines = ["## Diverged runs", "", f"Runs whose training loss became non-finite: {len(data.diverged)}. They "
             "finished (a deterministic result of the model and its settings), so they are not incomplete, but they "
             "have no accuracy: every mean is over the runs that completed, with this count beside it. A claim that "
             "needs a model whose every run diverged is not run: diverged. `tables/diverged.csv` (per model), "
             "`tables/diverged_runs.csv` (per run).", ""]
    if len(data.diverged):
        div = tables["diverged"]
        div = div[div.diverged > 0]
        div = div.assign(**{c: [integer(v) for v in div[c]] for c in ("first_diverged_epoch", "last_diverged_epoch")})
        per_run = tables["diverged_runs"][["path", "experiment", "model", "seed", "diverged_epoch", "diverged_loss",
                                           "variant", "lr"]]
        per_run = per_run.assign(diverged_epoch=[integer(v) for v in per_run.diverged_epoch],
                                 lr=[setting(v) for v in per_run.lr])
        lines += [md_table(div.fillna("").astype(str)), "", md_table(per_run.fillna("").astype(str)), ""]
    return lines


def write_markdown(out: Path, dirs, data: Runs, tables: dict, card: pd.DataFrame, figures: list[Path],
                   th: Thresholds, sections=None) -> Path:
    """report.md: the scorecard, every table and every figure on one page; `sections(fig)` gives more sections'
    lines (the study's) from the figures' relative paths, placed after the papers' own."""
    fig = {p.stem: p.relative_to(out).as_posix() for p in figures}
    lines = _head(dirs, data) + _scorecard(card)
    lines += ["## Runs and baseline", "", "Train/test accuracy and train loss at the end of training, mean ± std over "
              "the n complete runs, published beside (USE baseline or LEARN test accuracy); diverged runs are counted "
              "beside, never in the mean. `tables/baseline.csv`, `tables/runs.csv`.",
              "", md_table(_md_baseline(tables["baseline"])), ""]
    lines += _use(tables, fig) + _learn(tables, fig)
    lines += ["## Dead and rarely active units", "", "Per activation layer: dead = |activation| <= 1e-6 on every "
              "sample, rare = non-zero on fewer than 1% of samples; counts mean ± std over runs.", "",
              md_table(_md_units(tables["units"])), ""]
    lines += markdown_section(tables, fig, th)
    lines += sections(fig) if sections else []
    curves = [k for k in fig if k.startswith("learning_curves_")]
    lines += ["## Learning curves", ""] + ([f"![{k}]({fig[k]})\n" for k in curves] or ["_No metrics.csv found._", ""])
    lines += _diverged(data, tables)
    shown = data.incomplete.assign(last_train_acc_pct=[num(v) for v in data.incomplete.last_train_acc_pct])
    lines += ["## Incomplete runs", "", f"Run folders without a complete summary.json: {len(data.incomplete)}. "
              "They are counted in no table. `tables/incomplete_runs.csv`.", "",
              md_table(shown.fillna("").astype(str)), ""]
    lines += ["## Provenance", "", "What produced the complete runs (each summary.json's provenance block): one row "
              "per dmlight version, commit, library versions and device, with its run count. A model whose runs "
              "mix them is warned about at the top. `tables/provenance.csv`.", "",
              md_table(tables["provenance"].fillna("").astype(str)), ""]
    lines += ["## Notes: scorecard thresholds", "", md_table(thresholds_table(th)), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
