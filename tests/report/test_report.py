"""dmlight.report on hand-made run folders: files, numbers, scorecard flips, incomplete runs, CLI, W&B payload;
and the package's shape: one function per claim, each threshold stated once, small torch-free modules."""
import doctest
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

import dmlight.report as report
from dmlight.report import THRESHOLDS, build_report, load_runs, scorecard

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import make_learn_runs, make_run, make_use_runs  # noqa: E402

TABLES = ("runs", "incomplete_runs", "diverged", "diverged_runs", "baseline", "use_scale", "use_clip", "use_offset",
          "perturbation_curves", "learn_accuracy", "learn_pairs", "units")
FIGURES = ("perturbation", "test_accuracy", "learning_curves_use_distance_metrics",
           "learning_curves_learn_distance_metrics", "learning_curves_learn_bias", "learning_curves_offset_l2")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every paper model at the published numbers (3 seeds), plus an incomplete and a failed run; report built once."""
    root = tmp_path_factory.mktemp("runs")
    make_use_runs(root)
    make_learn_runs(root)
    make_run(root, "use_distance_metrics", "ReLU_Bias", 7, test_acc=0.5, complete=False)  # still running
    failed = make_run(root, "learn_distance_metrics", "ReLU", 8, test_acc=0.5, complete=False)
    (failed / "failed.json").write_text(json.dumps({"error": "loss became nan at epoch 12"}))
    # Hydra's and W&B's own config.yaml files must not look like runs.
    for sub in (".hydra", "wandb/run-1/files"):
        (failed / sub).mkdir(parents=True)
        (failed / sub / "config.yaml").write_text("seed: 8\n")
    out = build_report([root])
    return root, out


def card_of(root) -> dict:
    c = scorecard(load_runs([root]))
    return {(r.paper, r.claim_id): r.status for r in c.itertuples()}


def test_every_table_figure_and_link_is_written(full):
    root, out = full
    assert out == root / "report"
    md = (out / "report.md").read_text()
    for name in TABLES:
        assert (out / "tables" / f"{name}.csv").exists(), name
    card = pd.read_csv(out / "scorecard.csv")
    assert list(card.columns) == ["paper", "claim_id", "claim", "status", "evidence", "threshold"]
    assert len(card) == 10 and set(card.paper) == {"USE", "LEARN"}
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name
        assert mpimg.imread(png).shape[1] > 400, name
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF", name
        assert f"](figures/{name}.png)" in md, name
    assert not (out / "figures" / "clamp.png").exists()  # no clamp sweep in these runs


def test_published_numbers_replicate_every_claim(full):
    """The thresholds are consistent with the papers: their own numbers pass every claim."""
    root, out = full
    card = pd.read_csv(out / "scorecard.csv")
    assert (card.status == "replicated").all(), card[card.status != "replicated"][["paper", "claim_id", "evidence"]]


def test_incomplete_runs_are_listed_and_not_counted(full):
    root, out = full
    inc = pd.read_csv(out / "tables" / "incomplete_runs.csv")
    assert len(inc) == 2  # not .hydra/ nor wandb/ below the failed run
    assert inc.path.str.contains("seed7").any() and inc.path.str.contains("seed8").any()
    assert inc.reason.str.contains("loss became nan").any()
    assert set(inc.seed.astype(int)) == {7, 8} and set(inc.epochs_logged) == {20}
    base = pd.read_csv(out / "tables" / "baseline.csv").set_index(["experiment", "model"])
    assert base.loc[("use_distance_metrics", "ReLU_Bias"), "n"] == 3
    assert base.loc[("learn_distance_metrics", "ReLU"), "n"] == 3
    assert len(pd.read_csv(out / "tables" / "runs.csv")) == 2 * 3 + 16 * 3
    md = (out / "report.md").read_text()
    assert "**54 complete runs**, 2 incomplete" in md and "seed7" in md and "seed8" in md


def test_baseline_and_learn_tables_numbers(full):
    root, out = full
    base = pd.read_csv(out / "tables" / "baseline.csv").set_index(["experiment", "model"])
    relu = base.loc[("use_distance_metrics", "ReLU_Bias")]
    assert relu.test_acc_pct_mean == pytest.approx(95.61)  # seeds at 95.51, 95.61, 95.71
    assert relu.test_acc_pct_std == pytest.approx(0.1)
    assert relu.published_train_acc_pct_mean == 98.33 and relu.published_train_loss_mean == 0.0610
    learn = pd.read_csv(out / "tables" / "learn_accuracy.csv").set_index(["experiment", "model"])
    relu2 = learn.loc[("learn_distance_metrics", "ReLU2")]
    assert (relu2.mean_pct, relu2.std_pct, relu2.n) == (pytest.approx(56.31), pytest.approx(19.31), 3)
    x = 56.31 + 19.31 * np.array([-1.0, 0.0, 1.0])
    assert (relu2.ci_lo_pct, relu2.ci_hi_pct) == pytest.approx(st.t.interval(0.95, 2, x.mean(), st.sem(x)))
    assert relu2.published_mean_pct == 56.31 and relu2.published_discussion_mean_pct == 47.20


def test_use_point_tables_match_published_and_paired_test(full):
    root, out = full
    off = pd.read_csv(out / "tables" / "use_offset.csv")
    relu = off[(off.model == "ReLU_Bias")].set_index("point_pct", drop=False)
    # the stale first sweep (accuracy 10%) was overridden by the later rows
    assert relu.loc[-5.0, "mean_pct"] == pytest.approx(97.78 - 0.05, abs=0.06)
    assert relu.loc[-5.0, "published_pct"] == 97.78 and relu.loc[-5.0, "magnitude_used"] == pytest.approx(-0.05)
    # per-unit rows (unit 5 at +-10%, accuracy 20%) and test-set rows (3 pp lower) stay out of the table
    assert relu.loc[10.0, "mean_pct"] == pytest.approx(96.31 - 0.05, abs=0.06)
    assert relu.loc[-10.0, "mean_pct"] == pytest.approx(96.55 - 0.05, abs=0.06)
    # the paired t-test against each run's own baseline, recomputed from the CSV files
    pert = pd.concat(pd.read_csv(p).drop_duplicates(["kind", "magnitude", "split", "unit"], keep="last")
                     for p in sorted(root.glob("use_distance_metrics/*/ReLU_Bias/seed*/perturbation.csv")))
    pert = pert[(pert.split == "train") & (pert.unit.astype(str) == "all")]
    base = pert[pert.kind == "baseline"].accuracy.values
    at = pert[(pert.kind == "offset") & np.isclose(pert.magnitude, -0.05)].accuracy.values
    assert len(base) == len(at) == 3
    ref = st.ttest_rel(at, base)
    assert (relu.loc[-5.0, "t"], relu.loc[-5.0, "p"]) == pytest.approx((ref.statistic, ref.pvalue))
    assert relu.loc[-5.0, "drop_pp"] == pytest.approx(100 * (base - at).mean())
    # 5% is not on the authors' log grid: the nearest point is used and shown
    scale = pd.read_csv(out / "tables" / "use_scale.csv")
    row = scale[(scale.model == "Abs_Bias") & (scale.point_pct == 5.0)].iloc[0]
    assert row.magnitude_used == pytest.approx(10 ** (-2 + 3 * 23 / 99))
    assert row.published_pct == 99.86


def test_pairs_and_units_tables(full):
    root, out = full
    pairs = pd.read_csv(out / "tables" / "learn_pairs.csv").set_index(["a", "b"])
    row = pairs.loc[("Abs2-Neg", "Abs2")]
    a = 92.25 + 2.07 * np.array([-1.0, 0.0, 1.0])
    b = 95.95 + 0.17 * np.array([-1.0, 0.0, 1.0])
    ref = st.ttest_ind(a, b, equal_var=True)
    assert (row.t, row.dof, row.p) == pytest.approx((ref.statistic, 4, ref.pvalue))
    assert row.d == pytest.approx((a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    assert row.published_t == 8.97 and row.published_abs_d == 2.84
    assert ("ReLU-L2-Neg", "ReLU-L2") in pairs.index and ("ReLU2_Bias", "ReLU_Bias") in pairs.index
    units = pd.read_csv(out / "tables" / "units.csv").set_index(["experiment", "model", "layer", "split"])
    out_units = units.loc[("learn_distance_metrics", "ReLU2", "output_activation", "train")]
    assert (out_units.dead_mean, out_units.units, out_units.dead_pct_mean) == (3, 10, 30)
    hidden = units.loc[("learn_distance_metrics", "ReLU", "activation", "test")]
    assert hidden.dead_mean == pytest.approx((3 + 4 + 3) / 3) and hidden.rare_mean == 4


def test_use_claim_1_flips_at_keep_threshold(tmp_path):
    def lower_scale(by_pp):
        return lambda kind, m, acc: acc - by_pp * ((kind == "scale") & (m >= 0.1) & (m <= 0.3))

    make_use_runs(tmp_path / "kept", tweak=lower_scale(THRESHOLDS.keep_pp - 0.3))  # 0.23 + 0.2 = 0.43 pp drop
    make_use_runs(tmp_path / "lost", tweak=lower_scale(THRESHOLDS.keep_pp - 0.1))  # 0.23 + 0.4 = 0.63 pp drop
    assert card_of(tmp_path / "kept")[("USE", 1)] == "replicated"
    assert card_of(tmp_path / "lost")[("USE", 1)] == "not replicated"


def test_use_claim_3_flips_when_abs_survives_small_offsets(tmp_path):
    def flatten_abs_near_zero(kind, m, acc):  # Abs keeps its accuracy out to +-2%: it should drop there
        return np.where((kind == "offset") & (np.abs(m) <= 0.02 + 1e-9), acc.max(), acc)

    make_use_runs(tmp_path, tweak=None, models=("ReLU_Bias",))
    make_use_runs(tmp_path, tweak=flatten_abs_near_zero, models=("Abs_Bias",))
    card = card_of(tmp_path)
    assert card[("USE", 3)] == "not replicated"
    assert card[("USE", 1)] == card[("USE", 2)] == "replicated"


def test_learn_claim_2_flips_on_drop_and_dead_units(tmp_path):
    models = ("ReLU", "ReLU2")
    make_learn_runs(tmp_path / "collapse", models)
    make_learn_runs(tmp_path / "no_collapse", models, accuracy={"ReLU2": (96.62 - THRESHOLDS.collapse_pp + 1, 5.0)})
    make_learn_runs(tmp_path / "no_dead", models, dead_outputs={"ReLU2": 1})
    assert card_of(tmp_path / "collapse")[("LEARN", 2)] == "replicated"
    assert card_of(tmp_path / "no_collapse")[("LEARN", 2)] == "not replicated"
    assert card_of(tmp_path / "no_dead")[("LEARN", 2)] == "not replicated"


def test_learn_claim_1_flips_at_same_threshold(tmp_path):
    same = THRESHOLDS.same_pp
    make_learn_runs(tmp_path / "close", ("ReLU", "Abs"), accuracy={"Abs": (96.62 - same + 0.1, 0.2)})
    make_learn_runs(tmp_path / "apart", ("ReLU", "Abs"), accuracy={"Abs": (96.62 - same - 0.1, 0.2)})
    assert card_of(tmp_path / "close")[("LEARN", 1)] == "replicated"
    assert card_of(tmp_path / "apart")[("LEARN", 1)] == "not replicated"


def test_not_run_when_models_are_missing(tmp_path):
    make_learn_runs(tmp_path, ("ReLU", "Abs", "Abs2"))  # no ReLU2, no Abs2-Neg, no bias, no OffsetL2, no sweeps
    card = card_of(tmp_path)
    assert card[("LEARN", 1)] == "replicated"
    for key in [("USE", i) for i in (1, 2, 3, 4)] + [("LEARN", i) for i in (2, 3, 4, 5, 6)]:
        assert card[key] == "not run", key
    c = scorecard(load_runs([tmp_path])).set_index(["paper", "claim_id"])
    assert "missing ReLU2" in c.loc[("LEARN", 2), "evidence"]


# Diverged runs: finished, listed with their epoch and loss, counted beside every mean and never in one.
RELU_OK = (0.962, 0.968, 0.971)  # ReLU: 3 complete runs (seeds 0-2) ...
RELU_DIVERGED = ((3, 39, "nan"), (4, 70, "inf"))  # ... and 2 diverged (seed, epoch, loss): "2 of 5"
ABS_OK = (0.958, 0.961, 0.963, 0.966)  # Abs: 4 complete runs, none diverged (uneven group sizes)
NEG_OK = (0.963, 0.965)  # ReLU2-Neg: 2 complete and 1 diverged whose summary lacks its epoch and loss


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """LEARN runs where ReLU has 2 of 5 diverged (epochs 39, 70), ReLU2 all 3 diverged (epoch 12), ReLU2-Neg 1 of 3,
    ReLU_Bias all 2 diverged (epochs 5, 9); plus one incomplete run. Report built once."""
    root = tmp_path_factory.mktemp("diverged")
    exp = "learn_distance_metrics"
    for seed, acc in enumerate(RELU_OK):
        make_run(root, exp, "ReLU", seed, test_acc=acc, epochs=100, variant="")
    for seed, epoch, loss in RELU_DIVERGED:
        make_run(root, exp, "ReLU", seed, test_acc=0.5, diverged_at=epoch, diverged_loss=loss, epochs=100,
                 variant="")
    for seed, acc in enumerate(ABS_OK):
        make_run(root, exp, "Abs", seed, test_acc=acc, variant="")
    for seed in range(3):
        make_run(root, exp, "ReLU2", seed, test_acc=0.5, diverged_at=12, variant="")
    for seed, acc in enumerate(NEG_OK):
        make_run(root, exp, "ReLU2-Neg", seed, test_acc=acc, variant="")
    make_run(root, exp, "ReLU2-Neg", 2, test_acc=0.5, diverged_at=7, diverged_loss="-inf", diverged_fields=False)
    make_run(root, "learn_bias", "Abs_Bias", 0, test_acc=0.95, site="post_activation")
    for seed, epoch in ((0, 5), (1, 9)):
        make_run(root, "learn_bias", "ReLU_Bias", seed, test_acc=0.5, diverged_at=epoch, site="post_activation")
    make_run(root, exp, "Abs", 9, test_acc=0.5, complete=False)  # still running: incomplete, not diverged
    return root, build_report([root])


def test_diverged_runs_are_counted_per_model(diverged):
    root, out = diverged
    div = pd.read_csv(out / "tables" / "diverged.csv", dtype={"diverged_text": str, "diverged_losses": str})
    div = div.fillna({"diverged_text": "", "diverged_losses": ""}).set_index(["experiment", "model"])
    relu = div.loc[("learn_distance_metrics", "ReLU")]
    assert (relu.runs, relu.complete, relu.diverged) == (5, 3, 2)
    assert (relu.first_diverged_epoch, relu.last_diverged_epoch) == (39, 70)
    assert relu.diverged_text == "2 of 5 diverged at epochs 39-70" and relu.diverged_losses == "inf x1, nan x1"
    assert div.loc[("learn_distance_metrics", "ReLU2"), "diverged_text"] == "3 of 3 diverged at epoch 12"
    assert div.loc[("learn_distance_metrics", "ReLU2-Neg"), "diverged_text"] == "1 of 3 diverged at epoch 7"
    assert div.loc[("learn_bias", "ReLU_Bias"), "diverged_text"] == "2 of 2 diverged at epochs 5-9"
    assert (div.loc[("learn_distance_metrics", "Abs"), ["runs", "diverged", "diverged_text"]] == [4, 0, ""]).all()
    md = (out / "report.md").read_text()
    assert "## Diverged runs" in md and "| 2 of 5 diverged at epochs 39-70 |" in md
    assert "**10 complete runs**, 1 incomplete (listed at the end, counted nowhere), 8 diverged" in md


def test_diverged_runs_table_lists_epoch_and_loss(diverged):
    root, out = diverged
    rows = pd.read_csv(out / "tables" / "diverged_runs.csv", keep_default_na=False)
    assert list(rows.columns[:6]) == ["path", "experiment", "model", "seed", "diverged_epoch", "diverged_loss"]
    got = {(m, int(s), int(e), loss) for m, s, e, loss in zip(rows.model, rows.seed, rows.diverged_epoch,
                                                               rows.diverged_loss)}
    assert got == ({("ReLU", s, e, loss) for s, e, loss in RELU_DIVERGED} | {("ReLU2", s, 12, "nan") for s in range(3)}
                   | {("ReLU2-Neg", 2, 7, "-inf")}  # read from metrics.csv: the summary lacks them
                   | {("ReLU_Bias", 0, 5, "nan"), ("ReLU_Bias", 1, 9, "nan")})
    assert all(Path(p, "summary.json").exists() for p in rows.path)


def test_diverged_runs_are_not_incomplete_nor_in_runs(diverged):
    root, out = diverged
    inc = pd.read_csv(out / "tables" / "incomplete_runs.csv")
    assert len(inc) == 1 and inc.path.iloc[0].endswith("Abs/seed9")
    diverged_paths = set(pd.read_csv(out / "tables" / "diverged_runs.csv").path)
    assert len(diverged_paths) == 8 and not diverged_paths & set(inc.path)
    runs = pd.read_csv(out / "tables" / "runs.csv")
    assert len(runs) == 3 + 4 + 2 + 1 and not diverged_paths & set(runs.path)


def test_means_are_over_finished_runs_with_the_count_beside(diverged):
    root, out = diverged
    relu_mean, relu_std = 100 * np.mean(RELU_OK), 100 * np.std(RELU_OK, ddof=1)
    base = pd.read_csv(out / "tables" / "baseline.csv").set_index(["experiment", "model"])
    relu = base.loc[("learn_distance_metrics", "ReLU")]
    assert (relu.n, relu.runs, relu.diverged, relu.diverged_text) == (3, 5, 2, "2 of 5 diverged at epochs 39-70")
    assert relu.test_acc_pct_mean == pytest.approx(relu_mean) and relu.test_acc_pct_std == pytest.approx(relu_std)
    abs_ = base.loc[("learn_distance_metrics", "Abs")]
    assert (abs_.n, abs_.runs, abs_.diverged) == (4, 4, 0)
    assert abs_.test_acc_pct_mean == pytest.approx(100 * np.mean(ABS_OK))
    relu2 = base.loc[("learn_distance_metrics", "ReLU2")]  # every run diverged: a row, no mean
    assert (relu2.n, relu2.runs, relu2.diverged) == (0, 3, 3) and np.isnan(relu2.test_acc_pct_mean)
    learn = pd.read_csv(out / "tables" / "learn_accuracy.csv").set_index(["experiment", "model"])
    row = learn.loc[("learn_distance_metrics", "ReLU")]
    assert (row.n, row.runs, row.diverged) == (3, 5, 2) and row.mean_pct == pytest.approx(relu_mean)
    assert row.diverged_text == "2 of 5 diverged at epochs 39-70"
    neg = learn.loc[("learn_distance_metrics", "ReLU2-Neg")]
    assert (neg.n, neg.diverged, neg.mean_pct) == (2, 1, pytest.approx(100 * np.mean(NEG_OK)))
    pairs = pd.read_csv(out / "tables" / "learn_pairs.csv").set_index(["a", "b"])
    pair = pairs.loc[("ReLU", "Abs")]
    assert (pair.n_a, pair.diverged_a, pair.n_b, pair.diverged_b) == (3, 2, 4, 0)
    assert pair.diff_pp == pytest.approx(relu_mean - 100 * np.mean(ABS_OK))
    md = (out / "report.md").read_text()
    assert "| 3 (2 diverged) / 4 |" in md


def test_claim_status_not_run_diverged_and_evidence(diverged):
    root, out = diverged
    card = pd.read_csv(out / "scorecard.csv").set_index(["paper", "claim_id"])
    relu_mean = 100 * np.mean(RELU_OK)
    # ReLU2 diverged on every run: claim 2 cannot run, and says why
    assert card.loc[("LEARN", 2), "status"] == "not run: diverged"
    assert "missing ReLU2 (3 of 3 diverged at epoch 12, learn_distance_metrics)" in card.loc[("LEARN", 2), "evidence"]
    # ReLU partly diverged: the claims still run on its 3 complete runs, with the 2 diverged named beside the mean
    assert card.loc[("LEARN", 1), "status"] == "replicated"
    assert (f"ReLU {relu_mean:.2f} ± {100 * np.std(RELU_OK, ddof=1):.2f} (n=3, 2 of 5 diverged at epochs 39-70, "
            "learn_distance_metrics)") in card.loc[("LEARN", 1), "evidence"]
    assert card.loc[("LEARN", 3), "status"] == "replicated"
    ev3 = card.loc[("LEARN", 3), "evidence"]
    assert "2 of 5 diverged at epochs 39-70" in ev3 and "(n=2, 1 of 3 diverged at epoch 7" in ev3
    # models never run are plain "not run"; a bias model that diverged on every run makes claim 5 "not run: diverged"
    # (and not the USE claims: these ReLU_Bias runs are LEARN's, post-activation, and USE reads pre-activation sweeps)
    assert card.loc[("LEARN", 4), "status"] == "not run" and card.loc[("LEARN", 6), "status"] == "not run"
    assert card.loc[("LEARN", 5), "status"] == "not run: diverged"
    ev5 = card.loc[("LEARN", 5), "evidence"]
    assert "claim 1 with bias: not run: diverged (missing ReLU_Bias (2 of 2 diverged at epochs 5-9, learn_bias))" in ev5
    assert "claim 4 with bias: not run (" in ev5
    assert all(card.loc[("USE", i), "status"] == "not run" for i in (1, 2, 3, 4))
    md = (out / "report.md").read_text()
    assert "2 replicated, 0 not replicated, 6 not run, 2 not run: diverged" in md


def test_use_claims_not_run_when_a_model_diverged_on_every_run(tmp_path):
    make_use_runs(tmp_path, models=("Abs_Bias",))
    for seed, epoch in ((0, 3), (1, 3), (2, 4), (3, 6)):
        make_run(tmp_path, "use_distance_metrics", "ReLU_Bias", seed, test_acc=0.5, diverged_at=epoch)
    card = scorecard(load_runs([tmp_path])).set_index(["paper", "claim_id"])
    for i in (1, 2, 3, 4):
        assert card.loc[("USE", i), "status"] == "not run: diverged", i
        assert "ReLU_Bias: " in card.loc[("USE", i), "evidence"]
        assert "(4 of 4 diverged at epochs 3-6, use_distance_metrics)" in card.loc[("USE", i), "evidence"]
        assert "Abs_Bias [use_distance_metrics, n=3]" in card.loc[("USE", i), "evidence"]
    # one Abs run diverging too is named beside Abs's numbers, which stay over its 3 complete runs
    make_run(tmp_path, "use_distance_metrics", "Abs_Bias", 5, test_acc=0.5, diverged_at=40)
    ev = scorecard(load_runs([tmp_path])).set_index(["paper", "claim_id"]).loc[("USE", 1), "evidence"]
    assert "Abs_Bias [use_distance_metrics, n=3, 1 of 4 diverged at epoch 40]" in ev


def test_mixed_variants_warn_and_old_summaries_read_as_default(tmp_path):
    exp = "learn_distance_metrics"
    make_run(tmp_path, exp, "Abs", 0, test_acc=0.96, variant="")
    make_run(tmp_path, exp, "Abs", 1, test_acc=0.96, variant="optimizer.lr=0.0022", lr=0.0022)
    make_run(tmp_path, exp, "Abs", 2, test_acc=0.5, variant="optimizer.lr=0.0022", lr=0.0022, diverged_at=39)
    make_run(tmp_path, exp, "ReLU", 0, test_acc=0.96)  # a summary from before `variant`: reads as ""
    make_run(tmp_path, exp, "ReLU", 1, test_acc=0.96, variant="")
    make_run(tmp_path, exp, "ReLU2", 0, test_acc=0.6, variant="", hidden=64)
    make_run(tmp_path, exp, "ReLU2", 1, test_acc=0.6, variant="")
    out = build_report([tmp_path])
    warnings = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("> **Warning:**")]
    abs_ = [w for w in warnings if "Abs [learn_distance_metrics] mixes variants" in w]
    assert len(abs_) == 1
    assert "variant='' lr=0.001 hidden=128 (1 run(s))" in abs_[0]
    assert "variant='optimizer.lr=0.0022' lr=0.0022 hidden=128 (2 run(s), 1 diverged)" in abs_[0]
    assert any("ReLU2 [learn_distance_metrics] mixes variants" in w and "hidden=64" in w for w in warnings)
    assert not any(w.startswith("> **Warning:** ReLU [") for w in warnings)
    runs = pd.read_csv(out / "tables" / "runs.csv", keep_default_na=False)
    assert "variant" in runs.columns
    assert sorted(runs.variant) == [""] * 5 + ["optimizer.lr=0.0022"]


def test_report_with_only_incomplete_runs(tmp_path):
    make_run(tmp_path, "learn_distance_metrics", "ReLU", 0, test_acc=0.9, complete=False)
    out = build_report([tmp_path], out=tmp_path / "elsewhere")
    card = pd.read_csv(out / "scorecard.csv")
    assert (card.status == "not run").all()
    assert len(pd.read_csv(out / "tables" / "incomplete_runs.csv")) == 1
    assert len(pd.read_csv(out / "tables" / "baseline.csv")) == 0
    assert "**0 complete runs**, 1 incomplete" in (out / "report.md").read_text()


def test_cli_subprocess(tmp_path):
    make_learn_runs(tmp_path / "runs", ("ReLU", "Abs", "ReLU2"))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "dmlight.report", str(tmp_path / "runs"), f"report.out={tmp_path / 'r'}",
           "report.pairs=ReLU2:Abs", "report.wandb=false", "report.same_pp=0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for stage in ("runs found: 9", "tables written", "figures written", "scorecard:", f"report: {tmp_path / 'r'}"):
        assert stage in done.stdout, stage
    pairs = pd.read_csv(tmp_path / "r" / "tables" / "learn_pairs.csv")
    assert ("ReLU2", "Abs") in set(zip(pairs.a, pairs.b))
    card = pd.read_csv(tmp_path / "r" / "scorecard.csv")
    assert card.threshold.str.contains("same_pp=0.5 pp").any()
    with pytest.raises(SystemExit, match="unknown option 'report.colour'"):
        report.main([str(tmp_path / "runs"), "report.colour=red"])
    with pytest.raises(SystemExit, match="not 'A:B'"):
        report.main([str(tmp_path / "runs"), "report.pairs=ReLU-Abs"])


def test_report_imports_neither_torch_nor_wandb():
    code = "import sys, dmlight.report, dmlight.stats; print(sorted({'torch', 'wandb'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_wandb_payload_and_mode(tmp_path, monkeypatch, full):
    root, out = full
    tables = {"baseline": pd.read_csv(out / "tables" / "baseline.csv")}
    card = pd.read_csv(out / "scorecard.csv")
    payload = report.wandb_payload(tables, [out / "figures" / "perturbation.png"], card)
    assert set(payload["tables"]) == {"baseline", "scorecard"}
    assert payload["images"] == {"perturbation": out / "figures" / "perturbation.png"}
    assert payload["summary"]["claim/USE-1"] == "replicated" and len(payload["summary"]) == 10

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    assert report.wandb_mode() == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    netrc.chmod(0o600)
    assert report.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert report.wandb_mode() == "disabled"


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_wandb_run_without_an_account(tmp_path, monkeypatch, capsys, mode):
    pytest.importorskip("wandb")
    for var in [v for v in os.environ if v.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    if mode == "disabled":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no user settings, no account: offline is chosen by itself
    make_learn_runs(tmp_path / "runs", ("ReLU", "Abs"))
    out = build_report([tmp_path / "runs"], wandb=True)
    assert f"(mode {mode})" in capsys.readouterr().out
    offline = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == (1 if mode == "offline" else 0)
    assert all(f.stat().st_size > 0 for f in offline)
    # a second report does not mistake W&B's files for runs
    assert len(load_runs([tmp_path / "runs"], skip=[]).incomplete) == 0


def test_find_run_dirs_skips_tool_folders_and_containers(tmp_path):
    def touch(*parts):
        path = tmp_path.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")

    touch("a", "seed0", "config.yaml")  # just started: only its config
    touch("a", "seed0", "wandb", "run-1", "files", "config.yaml")  # W&B's copy of the config
    touch("a", "seed0", ".hydra", "config.yaml")  # Hydra's copy
    touch("b", "seed1", "summary.json")
    touch("b", "seed1", "lightning_logs", "version_0", "metrics.csv")  # inside a run: belongs to it
    touch("sweep", "config.yaml")  # a folder of runs that also holds a config is a container
    touch("sweep", "c", "seed2", "metrics.csv")
    touch("report", "old", "config.yaml")  # the report's own folder is skipped
    found = report.find_run_dirs([tmp_path], skip=[tmp_path / "report"])
    assert found == [tmp_path / "a" / "seed0", tmp_path / "b" / "seed1", tmp_path / "sweep" / "c" / "seed2"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        report.find_run_dirs([tmp_path / "nowhere"])


def test_thresholds_are_stated_once_and_generated_everywhere(full):
    """Each threshold's value and why live in Thresholds' fields only; the help, report.md's Notes and the
    scorecard's rules are generated from them."""
    root, out = full
    help_text, md = report.cli.usage(), (out / "report.md").read_text()
    for f in fields(THRESHOLDS):
        value, why = getattr(THRESHOLDS, f.name), f.metadata["why"]
        assert why, f.name
        assert f"{f.name} = {value}" in help_text, f.name
        assert "| {} | {} | {} |".format(f.name, value, why.replace("|", "\\|")) in md, f.name
    # no module restates a value: the rules cite thresholds through Thresholds.named
    for path in Path(report.__file__).parent.glob("*.py"):
        if path.name != "thresholds.py":
            text = path.read_text()
            for f in fields(THRESHOLDS):
                for literal in (f"{f.name} = {getattr(THRESHOLDS, f.name)}", f"{f.name}={getattr(THRESHOLDS, f.name)}"):
                    assert literal not in text, (path.name, literal)
    # every value a rule cites is the one it was given
    moved = replace(THRESHOLDS, **{f.name: getattr(THRESHOLDS, f.name) * 2 + 0.25 for f in fields(THRESHOLDS)})
    rules = " ".join(scorecard(load_runs([root]), moved).threshold)
    cited = re.findall(r"(\w+)=([-\d.]+)", rules)
    study = {f.name for f in fields(THRESHOLDS) if f.name.startswith("study_")}  # the study's rules (test_study.py)
    assert {name for name, _ in cited} == {f.name for f in fields(THRESHOLDS)} - {"match_rel_tol"} - study
    for name, value in cited:
        assert float(value) == getattr(moved, name), name


def test_docstring_examples_run():
    attempted = 0
    for info in pkgutil.iter_modules(report.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"dmlight.report.{info.name}")
        result = doctest.testmod(module)
        assert result.failed == 0, info.name
        attempted += result.attempted
    assert attempted > 0


def test_no_report_module_is_over_400_lines():
    for path in Path(report.__file__).parent.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_every_report_module_imports_without_torch():
    names = [f"dmlight.report.{m.name}" for m in pkgutil.iter_modules(report.__path__) if m.name != "__main__"]
    code = f"import dmlight.report, sys; import {', '.join(names)}; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_each_claim_is_one_function_with_its_checks_and_rule(full, tmp_path):
    assert [(c.paper, c.number) for c in report.CLAIMS] == [("USE", i) for i in range(1, 5)] + [
        ("LEARN", i) for i in range(1, 7)]
    assert len({c.check for c in report.CLAIMS}) == len(report.CLAIMS)  # no function serves two claims
    root, _ = full
    (tmp_path / "empty").mkdir()
    for data in (load_runs([root]), load_runs([tmp_path / "empty"])):
        for claim in report.CLAIMS:
            checks, evidence, rule = claim.check(data, THRESHOLDS)
            assert checks and all(c in (True, False, None) for c in checks), (claim.paper, claim.number)
            assert evidence and all(isinstance(e, str) and e for e in evidence), (claim.paper, claim.number)
            assert isinstance(rule, str) and rule.strip(), (claim.paper, claim.number)
            assert claim.text and claim.models and claim.check.__doc__


def test_provenance_is_tabled_mixed_versions_are_flagged_and_the_last_lines_say_what_was_found(tmp_path, capsys):
    def prov(torch="2.14.1", device_name="Intel(R) Xeon(R) Processor", commit="a" * 40):
        return {"dmlight": "0.1.0", "git_commit": commit, "git_dirty": False, "torch": torch, "lightning": "2.6.6",
                "python": "3.11.7", "device": "cpu", "device_name": device_name, "torch_threads": 2}

    # ReLU: 3 runs on torch 2.14.1 and 1 on 2.13.0; Abs: 2 runs on one GPU and 1 on another; old summaries have none.
    for seed, torch_version in zip((1, 4, 6, 9), ("2.14.1", "2.14.1", "2.13.0", "2.14.1")):
        make_run(tmp_path, "learn_distance_metrics", "ReLU", seed, test_acc=0.96, provenance=prov(torch_version))
    for seed, gpu in zip((2, 3, 5), ("NVIDIA H100", "NVIDIA H100", "NVIDIA H200")):
        make_run(tmp_path, "learn_distance_metrics", "Abs", seed, test_acc=0.95, provenance=prov(device_name=gpu))
    make_run(tmp_path, "learn_distance_metrics", "ReLU2", 0, test_acc=0.5)
    out = build_report([tmp_path])
    log = capsys.readouterr().out.splitlines()

    table = pd.read_csv(out / "tables" / "provenance.csv", keep_default_na=False, dtype=str)
    got = sorted(zip(table.torch, table.device_name, table.runs))
    assert got == sorted([("2.14.1", "Intel(R) Xeon(R) Processor", "3"), ("2.13.0", "Intel(R) Xeon(R) Processor", "1"),
                          ("2.14.1", "NVIDIA H100", "2"), ("2.14.1", "NVIDIA H200", "1"), ("", "", "1")])
    assert set(table.git_commit) == {"a" * 40, ""}
    warned = [line for line in log if "mixes versions or devices" in line]
    assert len(warned) == 2
    assert any("ReLU [learn_distance_metrics]" in w and "torch 2.13.0 x1; torch 2.14.1 x3" in w for w in warned)
    assert any("Abs [learn_distance_metrics]" in w and "device_name NVIDIA H100 x2; device_name NVIDIA H200 x1" in w
               for w in warned)
    md = (out / "report.md").read_text()
    assert "## Provenance" in md and "NVIDIA H200" in md and "mixes versions or devices" in md

    # The last lines: what was found (each claim that ran, one line each), then where.
    card = pd.read_csv(out / "scorecard.csv")
    ran = card[~card.status.str.startswith("not run")]
    assert len(ran) >= 1  # LEARN claim 1 (ReLU vs Abs) runs on these models
    claim_lines = [i for i, line in enumerate(log) if re.match(r"\[report\]   (USE|LEARN) \d+ ", line)]
    assert [log[i].split(" Found: ")[0] for i in claim_lines] == \
        [f"[report]   {r.paper} {r.claim_id} {r.status}: {r.claim}" for r in ran.itertuples()]
    assert all(str(r.evidence)[:100] in log[i] for i, r in zip(claim_lines, ran.itertuples()))
    assert log[-1] == f"[report] report: {out / 'report.md'}" or "figure" in log[-1]
    assert max(claim_lines) < next(i for i, line in enumerate(log) if line.startswith("[report] report: "))
