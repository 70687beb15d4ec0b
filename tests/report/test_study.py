"""The study's verdict rule on hand-made sweeps with literal expected verdicts, and a tiny real study end to end
through the report's "Beyond the papers" section."""
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import make_run  # noqa: E402

from dmlight.report.load import load_runs  # noqa: E402
from dmlight.report.study import learn_pairs, study_table  # noqa: E402

BASE = 0.97


def sweep(drops: dict[str, float], base: float = BASE) -> pd.DataFrame:
    """A final sweep whose kind k drops by drops[k] pp at a size of change of 0.5: two points per kind on the
    side below its identity (offset: above), at changes 0.25 and 0.75 with drops d/2 and 3d/2."""
    rows = [{"epoch": 20, "kind": "baseline", "magnitude": None, "split": "train", "unit": "all", "accuracy": base,
             "change": 0.0, "range_of": "activation_output"}]
    for kind, d in drops.items():
        mags = (0.2, 0.6) if kind == "offset" else (0.5, 0.05)
        for p, change, drop in zip(mags, (0.25, 0.75), (d / 2, 3 * d / 2)):
            rows.append({"epoch": 20, "kind": kind, "magnitude": p, "split": "train", "unit": "all",
                         "accuracy": base - drop / 100, "change": change, "range_of": "activation_output"})
    return pd.DataFrame(rows)


def runs(root, model, seeds_drops, base=BASE, variant=None, diverged_seeds=()):
    for seed, drops in seeds_drops.items():
        make_run(root, "study", model, seed, test_acc=base - 0.03, train_acc=base, perturbation=sweep(drops, base),
                 variant=variant)
    for seed in diverged_seeds:
        make_run(root, "study", model, seed, test_acc=0.0, diverged_at=5, variant=variant)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    # ReLU: distance far above unit_scale; its uniform scale (50 pp) is the algebra's, left out
    runs(root, "ReLU_Bias", {3: {"offset": 30, "unit_scale": 2, "scale": 50}, 5: {"offset": 28, "unit_scale": 2.5,
         "scale": 50}, 8: {"offset": 32, "unit_scale": 1.5, "scale": 50}})
    # tanh is not homogeneous: its uniform scale counts, and is the largest intensity drop
    runs(root, "Tanh_Bias", {3: {"offset": 2, "unit_scale": 30, "scale": 40}, 4: {"offset": 2.2, "unit_scale": 28,
         "scale": 44}, 9: {"offset": 1.8, "unit_scale": 31, "scale": 42}})
    runs(root, "GELU_Bias", {3: {"offset": 10, "clip": 8}, 4: {"offset": 12, "clip": 9}})
    runs(root, "Abs_Bias", {3: {"offset": 30, "scale": 1}, 4: {"offset": 33, "scale": 1}})  # only the algebra's
    runs(root, "Sigmoid_Bias", {3: {"offset": 30, "unit_scale": 1}, 4: {"offset": 30, "unit_scale": 1}}, base=0.55)
    runs(root, "ReLU_Bias", {3: {"offset": 30, "unit_scale": 2}, 4: {"offset": 30, "unit_scale": 2}},
         variant="optimizer.lr=10", diverged_seeds=(5,))
    runs(root, "LeakyReLU_Bias", {3: {"offset": 30, "clip": 2}}, variant="one_seed")
    # a change of 0.5 moves neither code: the ratio of two floors would read as mixed
    runs(root, "Tanh_Bias", {3: {"offset": 0.3, "unit_scale": 0.1}, 4: {"offset": 0.4, "unit_scale": 0.2}},
         variant="flat")
    return study_table(load_runs([root])).set_index("setting")


def ci(logs):
    m, s, n = np.mean(logs), np.std(logs, ddof=1), len(logs)
    half = st.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def test_the_verdicts_are_the_rule_written_out(table):
    verdicts = dict(zip(table.index, table.verdict))
    assert verdicts == {
        "ReLU_Bias mnist5k-raw": "distance-coded",
        "Tanh_Bias mnist5k-raw": "intensity-coded",
        "GELU_Bias mnist5k-raw": "mixed",
        "Abs_Bias mnist5k-raw": "algebra only",
        "Sigmoid_Bias mnist5k-raw": "not trained",
        "ReLU_Bias mnist5k-raw optimizer.lr=10": "diverged",
        "LeakyReLU_Bias mnist5k-raw one_seed": "distance-coded",
        "Tanh_Bias mnist5k-raw flat": "insensitive",
    }


def test_the_drops_ratio_and_interval_against_a_reference(table):
    relu = table.loc["ReLU_Bias mnist5k-raw"]
    assert relu.layer == "hidden" and relu.seeds == 3 and relu.baseline_pct == pytest.approx(97.0)
    assert relu.distance_drop_pp == pytest.approx(30.0) and relu.intensity_drop_pp == pytest.approx(2.0)
    assert relu.intensity_kinds == "unit_scale"  # the uniform scale of a homogeneous activation left out
    want = ci([math.log(30 / 2), math.log(28 / 2.5), math.log(32 / 1.5)])
    assert (relu.ratio, relu.ratio_lo, relu.ratio_hi) == pytest.approx(want, rel=1e-9)
    assert relu.uniform_ratio == pytest.approx(math.exp(np.mean([math.log(30 / 50), math.log(28 / 50),
                                                                 math.log(32 / 50)])))  # the papers' test: < 1
    tanh = table.loc["Tanh_Bias mnist5k-raw"]
    assert tanh.intensity_kinds == "scale+unit_scale" and tanh.intensity_drop_pp == pytest.approx(42.0)
    assert tanh.ratio_hi < 0.5
    one = table.loc["LeakyReLU_Bias mnist5k-raw one_seed"]  # one seed: the point estimate decides, no interval
    assert one.ratio == pytest.approx(15.0) and math.isnan(one.ratio_lo)
    assert "train accuracy 55.0% < study_floor_pct=80.0%" in table.loc["Sigmoid_Bias mnist5k-raw"].why
    assert table.loc["ReLU_Bias mnist5k-raw optimizer.lr=10"].why.startswith("1 seed(s) diverged")


@pytest.mark.slow
def test_a_tiny_real_study_reaches_the_report_section(tmp_path):
    from dmlight.report import build_report
    from dmlight.train import train
    from tests.conftest import train_cfg

    for act, hidden in (("relu", "[64,32]"), ("tanh", "64")):
        train(train_cfg("experiment=study", f"activation={act}", f"arch.hidden={hidden}", "seeds=[3,4]",
                        "trainer.max_epochs=40", "run.checkpoint_every=40", f"paths.output_dir={tmp_path}"))
    out = build_report([tmp_path])
    study = pd.read_csv(out / "tables" / "study.csv")
    assert sorted(zip(study.model, study.layer)) == [("ReLU_Bias_64x32", "hidden"), ("ReLU_Bias_64x32", "hidden2"),
                                                     ("Tanh_Bias", "hidden")]
    assert set(study.seeds) == {2} and study.verdict.isin(
        ["distance-coded", "intensity-coded", "mixed", "not trained"]).all()
    kinds = dict(zip(study.model + "/" + study.layer, study.intensity_kinds))
    assert kinds["ReLU_Bias_64x32/hidden"] == "clip+unit_scale" and kinds["Tanh_Bias/hidden"] == "clip+scale+unit_scale"
    md = (out / "report.md").read_text()
    section = md[md.index("## Beyond the papers"):]
    assert "![study_verdicts](figures/study_verdicts.png)" in section and "ReLU_Bias_64x32" in section
    assert (out / "figures" / "study_verdicts.png").stat().st_size > 10_000
    assert (out / "figures" / "study_change.png").is_file()
    card = pd.read_csv(out / "scorecard.csv")  # the papers' claims: the study's runs are not the papers' runs
    assert card.status.str.startswith("not run").all()


STUDY_AXES = ["study_activation", "study_depth", "study_width", "study_data", "study_optimizer", "study_learn"]


@pytest.mark.parametrize("axis", STUDY_AXES)
def test_every_study_axis_composes_at_each_of_its_values(axis):
    """Each axis (a Hydra sweep file) composes with every value it sweeps; the Makefile runs all of them."""
    from omegaconf import OmegaConf

    from dmlight.config import CONF_DIR, compose_config

    params = OmegaConf.load(CONF_DIR / "experiment" / f"{axis}.yaml").hydra.sweeper.params
    assert params, axis
    for key, values in params.items():
        for value in str(values).replace("[128,128],[128,128,128]", "[128,128];[128,128,128]").split(
                ";" if "[" in str(values) else ","):
            cfg = compose_config([f"experiment={axis}", f"{key}={value}"])
            assert cfg.experiment_name == ("study_learn" if axis == "study_learn" else "study")
            assert list(cfg.seeds) == [11, 12, 13] and cfg.trainer.max_epochs == 300
            assert cfg.perturbation.layer == ("hidden" if axis == "study_learn" else "all")
    assert re.search(rf"^STUDY_AXES := .*\b{axis}\b", (Path(__file__).parents[2] / "Makefile").read_text(), re.M)


def test_learn_pairs_compare_the_codes_by_a_t_test_and_cohens_d(tmp_path):
    name = {"tanh": "Tanh", "relu": "ReLU"}
    neg = {"tanh": [0.966, 0.964, 0.968], "relu": [0.90, 0.94, 0.86]}  # the distance code (mlp2_neg)
    plain = {"tanh": [0.950, 0.948, 0.952], "relu": [0.91, 0.93, 0.89, 0.92]}  # the intensity code (mlp2)
    for act in name:
        for seed, acc in enumerate(neg[act], start=3):
            make_run(tmp_path, "study_learn", f"{name[act]}2-Neg", seed, test_acc=acc)
        for seed, acc in enumerate(plain[act], start=3):
            make_run(tmp_path, "study_learn", f"{name[act]}2", seed, test_acc=acc)
    pairs = learn_pairs(load_runs([tmp_path])).set_index("activation")
    assert sorted(pairs.index) == ["relu", "tanh"]
    for act, want in (("tanh", "distance code better"), ("relu", "no clear difference")):
        a, b = 100 * np.array(neg[act]), 100 * np.array(plain[act])
        t, p = st.ttest_ind(a, b)  # Student's, pooled variance
        sp = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        row = pairs.loc[act]
        assert (row.n_distance, row.n_intensity) == (len(a), len(b))
        assert row.diff_pp == pytest.approx(a.mean() - b.mean()) and row.t == pytest.approx(t)
        assert row.p == pytest.approx(p) and row.cohens_d == pytest.approx((a.mean() - b.mean()) / sp)
        assert row.verdict == want and row.distance_model == f"{name[act]}2-Neg"
