"""The report from start to end: read the runs, write the tables, the scorecard, the figures and report.md, and
log them to W&B when asked."""
from __future__ import annotations

from pathlib import Path

from dmlight.report.claims import scorecard
from dmlight.report.emergence import draw_emergence, emergence_tables
from dmlight.report.figures import draw_all
from dmlight.report.groups import USE_KINDS, experiment_key, warnings
from dmlight.report.load import Runs, load_runs, log
from dmlight.report.markdown import integer, status_counts, write_markdown
from dmlight.report.tables import (DEFAULT_PAIRS, baseline_table, divergence_table, diverged_runs_table, learn_table,
                                   pairs_table, perturbation_curves, provenance_table, runs_table, units_table,
                                   use_point_table)
from dmlight.report.study import STUDY_EXPERIMENTS
from dmlight.report.study_report import draw_study, study_section, study_tables
from dmlight.report.thresholds import THRESHOLDS, Thresholds
from dmlight.report.wandb_run import log_to_wandb, wandb_payload


def all_tables(data: Runs, pairs=(), th: Thresholds = THRESHOLDS) -> dict:
    """Every table of the report by its CSV name (tables/<name>.csv); `pairs` adds (a, b) to the LEARN t-tests.
    emergence and sensitivity_ratio only when some run swept during training."""
    return {"runs": runs_table(data), "incomplete_runs": data.incomplete, "diverged": divergence_table(data),
            "diverged_runs": diverged_runs_table(data), "baseline": baseline_table(data),
            **{f"use_{k}": use_point_table(data, k, th) for k in USE_KINDS},
            "perturbation_curves": perturbation_curves(data), "learn_accuracy": learn_table(data),
            "learn_pairs": pairs_table(data, list(DEFAULT_PAIRS) + list(pairs or [])), "units": units_table(data),
            "provenance": provenance_table(data), **emergence_tables(data, th)}


def _log_runs(data: Runs, dirs) -> None:
    log(f"runs found: {len(data.runs) + len(data.incomplete) + len(data.diverged)} under "
        f"{', '.join(map(str, dirs))}: {len(data.runs)} complete, {len(data.incomplete)} incomplete, "
        f"{len(data.diverged)} diverged")
    for path, why in zip(data.incomplete.path, data.incomplete.reason):
        log(f"  incomplete: {path}: {why}")
    for r in data.diverged.itertuples():
        log(f"  diverged: {r.path}: loss {r.diverged_loss or '?'} at epoch {integer(r.diverged_epoch) or '?'}")
    for w in warnings(data):
        log(f"warning: {w}")


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
    every = load_runs(dirs, skip=[out])
    _log_runs(every, dirs)

    study = study_tables(every, thresholds)
    data = every.without(STUDY_EXPERIMENTS)  # the papers' tables and claims: the papers' experiments only
    tables = {**all_tables(data, pairs, thresholds), **study}
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(out / "tables" / f"{name}.csv", index=False)
    card = scorecard(data, thresholds)
    card.to_csv(out / "scorecard.csv", index=False)
    log(f"tables written: {len(tables)} CSV files in {out / 'tables'}, scorecard in {out / 'scorecard.csv'}")

    figures = draw_all(tables, data, out / "figures") + draw_emergence(tables, out / "figures", thresholds) \
        + draw_study(tables, every, out / "figures", thresholds)
    log(f"figures written: {len(figures)} (png + pdf) in {out / 'figures'}")

    md = write_markdown(out, dirs, data, tables, card, figures, thresholds,
                        sections=lambda fig: study_section(tables, fig, thresholds))
    log(f"scorecard: {status_counts(card)}")
    for row in card[~card.status.str.startswith("not run")].itertuples():  # what was found, one line a claim
        evidence = str(row.evidence)
        log(f"  {row.paper} {row.claim_id} {row.status}: {row.claim} Found: "
            f"{evidence if len(evidence) <= 160 else evidence[:157] + '...'}")
    if wandb:
        group = "+".join(sorted(data.runs.experiment.unique(), key=experiment_key)) or "report"
        log_to_wandb(wandb_payload(tables, figures, card), out, group,
                     {"dirs": [str(d) for d in dirs], "thresholds": thresholds.values()})
    log(f"report: {md}")
    for fig in figures:
        if fig.name == "perturbation.png":
            log(f"perturbation figure: {fig}")
    grown = [fig for fig in figures if fig.name.startswith("emergence_") or fig.name == "sensitivity_ratio.png"]
    if grown:  # the sweeps during training (perturbation.every_n_epochs)
        log(f"during training: {', '.join(f.name for f in grown)} in {grown[0].parent}")
    return out
