"""dmlight.report on runs that also swept during training (perturbation.csv with an `epoch` column, several sweeps):
the claims and tables read each run's final sweep only; emergence.csv, sensitivity_ratio.csv, their figures and
report.md's section show the sweeps by epoch; files without the column still load as one final sweep."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmlight.report import THRESHOLDS, build_report, load_runs, scorecard
from dmlight.report.load import PERTURBATION_COLUMNS, final_sweep, read_perturbation

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import (COARSE_LOG_GRID, COARSE_OFFSET_GRID, SWEEP_COLUMNS, make_run,  # noqa: E402
                             training_sweeps, use_sweep)

USE = "use_distance_metrics"
SECTION = "## How the code emerges during training"
SEEDS = {"ReLU_Bias": (3, 4, 5), "Abs_Bias": (7, 8)}  # seeds not from 0, uneven counts


def _use_run(root, model, seed, sweep, epochs=400):
    return make_run(root, USE, model, seed, test_acc=0.95, train_acc=0.99, epochs=epochs, perturbation=sweep)


@pytest.fixture(scope="module")
def emerging(tmp_path_factory):
    """USE runs that swept at epochs 0, 150 and 300 on coarse grids (near chance at first, the offset dip narrowing)
    and at 400 on the full grid (the published curves: every USE claim replicates). One file lists its final sweep
    first: the final sweep is the largest epoch, not the last rows. Report built once."""
    root = tmp_path_factory.mktemp("emerging")
    for model, seeds in SEEDS.items():
        for seed in seeds:
            sweep = training_sweeps(model, seed, epochs=(0, 150, 300), final_epoch=400)
            if (model, seed) == ("ReLU_Bias", 4):
                sweep = pd.concat([sweep[sweep.epoch == 400], sweep[sweep.epoch < 400]])
            _use_run(root, model, seed, sweep)
    return root, build_report([root])


def test_claims_and_tables_read_only_the_final_sweep(emerging, tmp_path):
    root, out = emerging
    card = pd.read_csv(out / "scorecard.csv").set_index(["paper", "claim_id"])
    for i in (1, 2, 3, 4):
        assert card.loc[("USE", i), "status"] == "replicated", card.loc[("USE", i), "evidence"]
    # The same runs with their final sweeps alone, in the old format: the same scorecard and tables, byte for byte.
    for model, seeds in SEEDS.items():
        for seed in seeds:
            _use_run(tmp_path, model, seed, use_sweep(model, seed))
    alone = build_report([tmp_path])
    for name in ("scorecard.csv", "tables/use_scale.csv", "tables/use_clip.csv", "tables/use_offset.csv",
                 "tables/perturbation_curves.csv"):
        assert (out / name).read_bytes() == (alone / name).read_bytes(), name
    # ... and the earlier sweeps differ enough that reading them would change the verdicts
    data = load_runs([root])
    mixed = replace(data, perturbation=data.sweeps[PERTURBATION_COLUMNS])
    statuses = scorecard(mixed).set_index(["paper", "claim_id"]).status
    assert (statuses.loc["USE"] == "not replicated").any()


def test_emergence_table_uses_the_coarse_grid_and_the_final_sweep_at_it(emerging):
    root, out = emerging
    t = pd.read_csv(out / "tables" / "emergence.csv")
    assert list(t.columns) == ["experiment", "model", "site", "kind", "split", "epoch", "magnitude",
                               "accuracy_pct_mean", "n"]
    assert set(t.split) == {"train"} and set(t.epoch) == {0, 150, 300, 400}
    assert set(zip(t.model, t.n)) == {("ReLU_Bias", 3), ("Abs_Bias", 2)}
    for epoch in (0, 150, 400):
        scale = t[(t.model == "Abs_Bias") & (t.kind == "scale") & (t.epoch == epoch)]
        assert np.allclose(scale.magnitude, COARSE_LOG_GRID)  # 34 points, the same at every epoch
        offset = t[(t.model == "Abs_Bias") & (t.kind == "offset") & (t.epoch == epoch)]
        assert np.allclose(offset.magnitude, COARSE_OFFSET_GRID)
    # the final row: each seed's final (full-grid) sweep at the coarse points, averaged
    final = pd.concat(use_sweep("Abs_Bias", s).drop_duplicates(["kind", "magnitude", "split", "unit"], keep="last")
                      for s in (7, 8))
    at = final[(final.kind == "offset") & (final.split == "train") & (final.unit == "all")
               & np.isclose(final.magnitude, COARSE_OFFSET_GRID[9])]
    assert len(at) == 2
    row = t[(t.model == "Abs_Bias") & (t.kind == "offset") & (t.epoch == 400)
            & np.isclose(t.magnitude, COARSE_OFFSET_GRID[9])]
    assert row.accuracy_pct_mean.item() == pytest.approx(100 * at.accuracy.mean())


def test_ratio_curve_ends_at_claim_4s_number(emerging):
    root, out = emerging
    ratio = pd.read_csv(out / "tables" / "sensitivity_ratio.csv")
    evidence = pd.read_csv(out / "scorecard.csv").set_index(["paper", "claim_id"]).loc[("USE", 4), "evidence"]
    for model in SEEDS:
        r = ratio[ratio.model == model].sort_values("epoch")
        assert list(r.epoch) == [0, 150, 300, 400] and set(r.n) == {len(SEEDS[model])}
        assert f"{model} [{USE}, n={len(SEEDS[model])}]: worst drop at offset ±10% {r.distance_pp.iloc[-1]:.2f} pp" \
               in evidence
        assert f"ratio {r.ratio.iloc[-1]:.1f}x" in evidence
        # during training each point is matched on the coarse grid, at the end on the full one
        assert np.isclose(abs(r.offset_minus_used.iloc[0] + 0.1), 0.02) and r.offset_minus_used.iloc[-1] == -0.1
        assert r.ratio.iloc[0] < THRESHOLDS.sensitivity_ratio < r.ratio.iloc[-1]  # the code emerges in training


def test_figures_and_markdown_section(emerging):
    root, out = emerging
    for name in ("emergence_ReLU_Bias", "emergence_Abs_Bias", "sensitivity_ratio"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF", name
    md = (out / "report.md").read_text()
    section = md[md.index(SECTION):md.index("## Learning curves")]
    for name in ("emergence_ReLU_Bias", "emergence_Abs_Bias", "sensitivity_ratio"):
        assert f"](figures/{name}.png)" in section, name
    assert "sensitivity_ratio=3.0" in section and "ReLU_Bias " in section and "x at epoch 400" in section


# Hand-written sweeps: accuracy (%) per (seed, epoch) at baseline, scale 10%, 100%, clip 50%, 100%, offset -10%, 0,
# +10% (the coarse grid); at epoch 400 the same points plus others (the full grid).
POINTS = (("baseline", np.nan), ("scale", 0.1), ("scale", 1.0), ("clip", 0.5), ("clip", 1.0), ("offset", -0.1),
          ("offset", 0.0), ("offset", 0.1))
ABS_SEED_7 = {0: (11.0, 11.0, 11.0, 11.0, 11.0, 11.0, 11.0, 11.0),
              150: (90.0, 89.5, 90.0, 88.0, 90.0, 60.0, 90.0, 65.0),
              300: (99.0, 98.9, 99.0, 98.0, 99.0, 80.0, 99.0, 78.0),
              400: (99.9, 99.8, 99.9, 99.5, 99.9, 86.0, 99.9, 81.0)}
LITERAL = {
    "ReLU_Bias": {
        (3, 0): (10.0, 10.05, 10.0, 9.98, 10.0, 9.5, 10.0, 9.8),
        (3, 150): (80.0, 79.0, 80.0, 78.0, 80.0, 70.0, 80.0, 74.0),
        (3, 300): (95.0, 94.8, 95.0, 94.5, 95.0, 80.0, 95.0, 85.0),
        (3, 400): (98.0, 97.9, 98.0, 97.8, 98.0, 96.0, 98.0, 96.5),
        (4, 0): (10.2, 10.2, 10.2, 10.1, 10.2, 10.0, 10.2, 9.6),
        (4, 150): (82.0, 81.5, 82.0, 81.0, 82.0, 76.0, 82.0, 70.0),
        (4, 300): (96.0, 95.0, 96.0, 95.5, 96.0, 84.0, 96.0, 88.0),
        (4, 400): (98.4, 98.3, 98.4, 98.2, 98.4, 96.4, 98.4, 96.0)},
    # seeds 7, 8, 9: seed 7's numbers lowered by 0, 1 and 3 pp (the same drops; a mean that is not the median)
    "Abs_Bias": {(seed, epoch): tuple(a - lower for a in acc) for lower, seed in zip((0, 1, 3), (7, 8, 9))
                 for epoch, acc in ABS_SEED_7.items()}}
FULL_ONLY = (("scale", 0.05), ("scale", 0.5), ("clip", 0.25), ("clip", 0.75), ("offset", -0.2), ("offset", -0.05),
             ("offset", 0.05), ("offset", 0.2))  # swept at epoch 400 only (at 50%, off the heatmap's grid)


def _literal_sweep(model: str, seed: int) -> pd.DataFrame:
    rows = [(150, "offset", -0.1, "train", "all", 0.01)]  # stale: the same point again at epoch 150 overrides it
    for epoch in (0, 150, 300, 400):
        acc = LITERAL[model][(seed, epoch)]
        rows += [(epoch, k, m, "train", "all", a / 100) for (k, m), a in zip(POINTS, acc)]
        rows += [(epoch, k, m, "test", "all", 0.5) for k, m in POINTS]  # another split: not in these tables
        rows += [(epoch, "offset", -0.1, "train", "5", 0.3)]  # one unit perturbed: neither
    rows += [(400, k, m, "train", "all", 0.5) for k, m in FULL_ONLY]
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


@pytest.fixture(scope="module")
def literal(tmp_path_factory):
    root = tmp_path_factory.mktemp("literal")
    for model in LITERAL:
        for seed in sorted({s for s, _ in LITERAL[model]}):
            _use_run(root, model, seed, _literal_sweep(model, seed))
    out = build_report([root])
    return (pd.read_csv(out / "tables" / "emergence.csv"), pd.read_csv(out / "tables" / "sensitivity_ratio.csv"),
            load_runs([root]))


def _cell(t, model, kind, epoch, magnitude=None):
    sel = (t.model == model) & (t.kind == kind) & (t.epoch == epoch)
    sel &= t.magnitude.isna() if magnitude is None else np.isclose(t.magnitude, magnitude)
    assert sel.sum() == 1, (model, kind, epoch, magnitude)
    return t[sel].iloc[0]


def test_emergence_csv_is_the_mean_over_seeds_of_the_numbers_written(literal):
    t, _, _ = literal
    assert _cell(t, "ReLU_Bias", "offset", 150, -0.1).accuracy_pct_mean == pytest.approx((70.0 + 76.0) / 2)
    assert _cell(t, "ReLU_Bias", "offset", 0, 0.1).accuracy_pct_mean == pytest.approx((9.8 + 9.6) / 2)
    assert _cell(t, "ReLU_Bias", "clip", 300, 0.5).accuracy_pct_mean == pytest.approx((94.5 + 95.5) / 2)
    assert _cell(t, "ReLU_Bias", "baseline", 400).accuracy_pct_mean == pytest.approx((98.0 + 98.4) / 2)
    assert _cell(t, "ReLU_Bias", "scale", 400, 0.1).accuracy_pct_mean == pytest.approx((97.9 + 98.3) / 2)
    assert _cell(t, "Abs_Bias", "offset", 300, 0.1).accuracy_pct_mean == pytest.approx((78.0 + 77.0 + 75.0) / 3)
    assert _cell(t, "Abs_Bias", "offset", 300, 0.1).n == 3 and _cell(t, "ReLU_Bias", "offset", 300, 0.1).n == 2
    # every cell, from the literal table
    for model, runs in LITERAL.items():
        seeds = sorted({s for s, _ in runs})
        for epoch in (0, 150, 300, 400):
            for i, (kind, m) in enumerate(POINTS):
                want = np.mean([runs[(s, epoch)][i] for s in seeds])
                cell = _cell(t, model, kind, epoch, None if kind == "baseline" else m)
                assert (cell.accuracy_pct_mean, cell.n) == (pytest.approx(want), len(seeds)), (model, kind, epoch, m)
    # the final sweep's other points (50%) are not on the heatmap's grid
    assert len(t) == 2 * 4 * len(POINTS) and (t.accuracy_pct_mean != 50.0).all()


def test_sensitivity_ratio_csv_is_claim_4s_formula(literal):
    _, r, _ = literal
    floor = THRESHOLDS.floor_pp
    relu = r[r.model == "ReLU_Bias"].set_index("epoch")
    # epoch 150: drops averaged over seeds 3 and 4 first, then the ratio (per-seed ratios 5 and 12 would average 8.5)
    want = max((80 - 70 + 82 - 76) / 2, (80 - 74 + 82 - 70) / 2) / max((80 - 79 + 82 - 81.5) / 2,
                                                                     (80 - 78 + 82 - 81) / 2, floor)
    assert relu.loc[150, "ratio"] == pytest.approx(want) == pytest.approx(6.0)
    assert relu.loc[150, "distance_pp"] == pytest.approx(9.0) and relu.loc[150, "intensity_pp"] == pytest.approx(1.5)
    # epoch 0: the intensity drops (-0.05, 0.02 / 0, 0.1) are below floor_pp, so the floor divides
    want = max((10 - 9.5 + 10.2 - 10.0) / 2, (10 - 9.8 + 10.2 - 9.6) / 2) / max((10 - 10.05 + 0) / 2,
                                                                                (10 - 9.98 + 10.2 - 10.1) / 2, floor)
    assert relu.loc[0, "ratio"] == pytest.approx(want) == pytest.approx(4.0)
    want = max((95 - 80 + 96 - 84) / 2, (95 - 85 + 96 - 88) / 2) / max((95 - 94.8 + 96 - 95) / 2,
                                                                     (95 - 94.5 + 96 - 95.5) / 2, floor)
    assert relu.loc[300, "ratio"] == pytest.approx(want)
    want = max((98 - 96 + 98.4 - 96.4) / 2, (98 - 96.5 + 98.4 - 96) / 2) / max((98 - 97.9 + 98.4 - 98.3) / 2,
                                                                             (98 - 97.8 + 98.4 - 98.2) / 2, floor)
    assert relu.loc[400, "ratio"] == pytest.approx(want)
    abs_ = r[r.model == "Abs_Bias"].set_index("epoch")  # seeds 7, 8, 9 lower every number by 0, 1, 3: drops alike
    assert abs_.loc[150, "ratio"] == pytest.approx(max(90 - 60, 90 - 65) / max(90 - 89.5, 90 - 88, floor))
    assert list(abs_.n) == [3, 3, 3, 3] and list(relu.n) == [2, 2, 2, 2]


def test_a_point_appended_twice_at_one_epoch_counts_once_the_last_time(literal, tmp_path):
    _, _, data = literal
    s = data.sweeps
    at = s[(s.model == "ReLU_Bias") & (s.kind == "offset") & np.isclose(s.magnitude, -0.1) & (s.split == "train")
           & (s.unit == "all")]
    assert sorted(at.groupby("run").size()) == [4, 4]  # one row per epoch and run: 0, 150, 300, 400
    assert 0.01 not in set(at.accuracy)
    path = tmp_path / "perturbation.csv"
    _literal_sweep("ReLU_Bias", 3).to_csv(path, index=False)
    df = read_perturbation(tmp_path)
    assert len(df[(df.epoch == 150) & (df.kind == "offset") & (df.magnitude == -0.1) & (df.unit == "all")
                  & (df.split == "train")]) == 1
    assert set(final_sweep(df).epoch) == {400} and len(final_sweep(df)) == 2 * len(POINTS) + 1 + len(FULL_ONLY)


def test_old_format_loads_as_one_final_sweep_and_no_section(tmp_path):
    """A file without `epoch`, and a new-format file with one sweep, give the same report and no emergence."""
    for root, epoch in ((tmp_path / "old", None), (tmp_path / "one", 400)):
        for model, seeds in SEEDS.items():
            for seed in seeds:
                sweep = use_sweep(model, seed)
                _use_run(root, model, seed, sweep if epoch is None else sweep.assign(epoch=epoch)[SWEEP_COLUMNS])
    old = read_perturbation(next((tmp_path / "old").rglob("perturbation.csv")).parent)
    assert old.epoch.isna().all() and len(final_sweep(old)) == len(old) > 0
    outs = {name: build_report([tmp_path / name]) for name in ("old", "one")}
    for name, out in outs.items():
        assert load_runs([tmp_path / name]).sweeps.empty
        assert not list((out / "tables").glob("emergence*")) and not list((out / "tables").glob("sensitivity*"))
        assert not list((out / "figures").glob("emergence*")) and not list((out / "figures").glob("sensitivity*"))
        assert SECTION not in (out / "report.md").read_text()
        assert (pd.read_csv(out / "scorecard.csv").status.iloc[:4] == "replicated").all()
    for name in ("scorecard.csv", "tables/use_offset.csv", "tables/perturbation_curves.csv", "tables/baseline.csv"):
        assert (outs["old"] / name).read_bytes() == (outs["one"] / name).read_bytes(), name


def test_a_run_without_its_final_sweep_is_warned_about(tmp_path):
    """In-training sweeps but none at the run's last epoch: its final sweep is an earlier one, and report.md says so."""
    for model, seeds in (("ReLU_Bias", (3, 4)), ("Abs_Bias", (7, 8, 9))):
        for seed in seeds:
            sweep = _literal_sweep(model, seed)
            _use_run(tmp_path, model, seed, sweep[sweep.epoch < 400] if (model, seed) == ("Abs_Bias", 8) else sweep)
    md = (build_report([tmp_path]) / "report.md").read_text()
    warned = [line for line in md.splitlines() if "swept during training but not at their last epoch" in line]
    assert warned == ["> **Warning:** Abs_Bias [use_distance_metrics]: 1 run(s) swept during training but not at their "
                      "last epoch (their last sweep: epoch 300 of 400): the tables and the scorecard read that earlier "
                      "sweep"]
