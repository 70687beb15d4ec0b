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
                    use_clip, use_offset, perturbation_curves, learn_accuracy, learn_pairs, units; emergence and
                    sensitivity_ratio when some run swept during training)
    figures/*.png and *.pdf   perturbation, clamp (when swept), test_accuracy, learning_curves_<experiment>;
                    emergence_<model> and sensitivity_ratio when some run swept during training

perturbation.csv may hold several sweeps, by `epoch` (training epochs completed when it ran; a file without the
column holds one): every table, figure and claim of the trained network reads each run's final sweep (its largest
epoch); the sweeps made during training (perturbation.every_n_epochs) feed emergence.py only.

One module per job:
    load.py        find run folders and read them (through dmlight.runs.files)
    groups.py      the papers' order, each model's home experiment, diverged counts, warnings
    tables.py      the tables, published numbers beside ours (dmlight/published.py)
    thresholds.py  the scorecard's thresholds, each with its value and why, stated once
    checks.py, claims.py   the scorecard: one function per claim, registered in CLAIMS
    figures.py, markdown.py, wandb_run.py   the figures, report.md, the W&B run
    emergence.py   the sweeps made during training: accuracy heatmaps, claim 4's ratio by epoch, their section
    build.py, cli.py       build_report and the command line
"""
from dmlight.tracking.loggers import wandb_mode
from dmlight.report.build import all_tables, build_report
from dmlight.report.checks import NOT_REPLICATED, NOT_RUN, NOT_RUN_DIVERGED, REPLICATED, STATUSES
from dmlight.report.claims import CLAIMS, Claim, Result, scorecard
from dmlight.report.cli import main
from dmlight.report.emergence import (emergence_table, emergence_tables, plot_emergence, plot_sensitivity,
                                     sensitivity_table)
from dmlight.report.figures import plot_learning_curves, plot_perturbation, plot_test_accuracy
from dmlight.report.groups import EXPERIMENT_ORDER, MODEL_ORDER, SPLIT, USE_KINDS, diverged_text
from dmlight.report.load import Runs, final_sweep, find_run_dirs, load_runs, read_perturbation
from dmlight.report.markdown import md_table, write_markdown
from dmlight.report.tables import (DEFAULT_PAIRS, baseline_table, divergence_table, diverged_runs_table, learn_table,
                                   pairs_table, perturbation_curves, provenance_table, runs_table, units_table,
                                   use_point_table)
from dmlight.report.thresholds import THRESHOLDS, Thresholds
from dmlight.report.wandb_run import log_to_wandb, wandb_payload

__all__ = ["build_report", "all_tables", "load_runs", "find_run_dirs", "Runs", "scorecard", "CLAIMS", "Claim",
           "Result", "THRESHOLDS", "Thresholds", "REPLICATED", "NOT_REPLICATED", "NOT_RUN", "NOT_RUN_DIVERGED",
           "STATUSES", "runs_table", "baseline_table", "use_point_table", "perturbation_curves", "learn_table",
           "pairs_table", "units_table", "provenance_table", "divergence_table", "diverged_runs_table", "DEFAULT_PAIRS", "diverged_text",
           "plot_perturbation", "plot_learning_curves", "plot_test_accuracy", "md_table", "write_markdown",
           "wandb_payload", "log_to_wandb", "wandb_mode", "main", "EXPERIMENT_ORDER", "MODEL_ORDER", "SPLIT",
           "USE_KINDS", "read_perturbation", "final_sweep", "emergence_table", "sensitivity_table", "emergence_tables",
           "plot_emergence", "plot_sensitivity"]
