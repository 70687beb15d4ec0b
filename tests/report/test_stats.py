"""dmlight.stats against values computed here by hand (numpy formulas) and by scipy.stats."""
import doctest
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats as st

from dmlight import published, stats
from dmlight.stats import (cohens_d, independent_ttest, independent_ttest_from_stats, mean_ci, mean_std,
                           paired_ttest)

A = np.array([96.71, 96.43, 96.80, 96.52, 96.66])
B = np.array([95.90, 95.61, 96.12, 95.80, 95.75])
C = np.array([92.1, 94.3, 89.9, 93.0])  # a different size, for the two-sample tests


def test_mean_std_by_hand():
    m, s, n = mean_std(A)
    assert n == 5
    assert m == pytest.approx(A.sum() / 5)
    assert s == pytest.approx(math.sqrt(((A - A.sum() / 5) ** 2).sum() / 4))


def test_mean_ci_by_hand_and_scipy():
    m, lo, hi = mean_ci(A)
    sem = A.std(ddof=1) / math.sqrt(len(A))
    assert m == pytest.approx(A.mean())
    # t quantile for 4 dof at 97.5% from a table: 2.7764
    assert lo == pytest.approx(A.mean() - 2.7764 * sem, abs=1e-4)
    assert hi == pytest.approx(A.mean() + 2.7764 * sem, abs=1e-4)
    slo, shi = st.t.interval(0.95, len(A) - 1, loc=A.mean(), scale=st.sem(A))
    assert (lo, hi) == pytest.approx((slo, shi))
    m90, lo90, hi90 = mean_ci(A, conf=0.90)
    assert lo < lo90 < m90 < hi90 < hi  # a narrower interval for less confidence


def test_paired_ttest_by_hand_and_scipy():
    d = A - B
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    t, p = paired_ttest(A, B)
    assert t == pytest.approx(t_hand)
    assert p == pytest.approx(2 * st.t.sf(abs(t_hand), len(d) - 1))
    ref = st.ttest_rel(A, B)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue))
    t2, p2 = paired_ttest(B, A)
    assert t2 == pytest.approx(-t) and p2 == pytest.approx(p)


def test_independent_ttest_pooled_by_hand_and_scipy():
    n1, n2 = len(A), len(C)
    sp = math.sqrt(((n1 - 1) * A.var(ddof=1) + (n2 - 1) * C.var(ddof=1)) / (n1 + n2 - 2))
    t_hand = (A.mean() - C.mean()) / (sp * math.sqrt(1 / n1 + 1 / n2))
    t, dof, p = independent_ttest(A, C)
    assert dof == n1 + n2 - 2 == 7
    assert t == pytest.approx(t_hand)
    ref = st.ttest_ind(A, C, equal_var=True)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue))
    # the same test from summary numbers, as for a published table
    ts, dofs, ps = independent_ttest_from_stats(A.mean(), A.std(ddof=1), n1, C.mean(), C.std(ddof=1), n2)
    assert (ts, dofs, ps) == pytest.approx((t, dof, p))
    ref = st.ttest_ind_from_stats(96.62, 0.17, 20, 95.87, 0.22, 20, equal_var=True)
    t20, dof20, p20 = independent_ttest_from_stats(96.62, 0.17, 20, 95.87, 0.22, 20)
    assert dof20 == 38 and (t20, p20) == pytest.approx((ref.statistic, ref.pvalue))


def test_cohens_d_by_hand():
    n1, n2 = len(A), len(C)
    sp = math.sqrt(((n1 - 1) * A.var(ddof=1) + (n2 - 1) * C.var(ddof=1)) / (n1 + n2 - 2))
    assert cohens_d(A, C) == pytest.approx((A.mean() - C.mean()) / sp)
    assert cohens_d(C, A) == pytest.approx(-(A.mean() - C.mean()) / sp)
    # d = t * sqrt(1/n1 + 1/n2) for the pooled test
    assert cohens_d(A, C) == pytest.approx(independent_ttest(A, C)[0] * math.sqrt(1 / n1 + 1 / n2))


def test_degenerate_inputs_give_nan_not_errors():
    assert all(math.isnan(v) for v in mean_ci([]))
    m, lo, hi = mean_ci([0.9])
    assert m == 0.9 and math.isnan(lo) and math.isnan(hi)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)  # zero variance: the interval collapses
    assert all(math.isnan(v) for v in paired_ttest([0.9], [0.8]))
    assert all(math.isnan(v) for v in paired_ttest([0.9, 0.8], [0.8, 0.7]))  # every difference equal
    t, dof, p = independent_ttest([1.0], [2.0])
    assert dof == 0 and math.isnan(t) and math.isnan(p)
    t, dof, p = independent_ttest([1.0, 1.0], [2.0, 2.0])
    assert dof == 2 and math.isnan(t) and math.isnan(p)
    assert all(math.isnan(v) for v in independent_ttest([], [1.0, 2.0]))
    assert math.isnan(cohens_d([1.0, 1.0], [2.0, 2.0]))
    assert math.isnan(cohens_d([1.0], [2.0]))


def test_nan_values_are_dropped():
    assert mean_std([1.0, np.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    t, p = paired_ttest([1.0, 2.0, np.nan, 4.5], [0.5, 1.0, 3.0, 3.0])
    assert (t, p) == pytest.approx(paired_ttest([1.0, 2.0, 4.5], [0.5, 1.0, 3.0]))
    with pytest.raises(ValueError, match="one value per run"):
        paired_ttest([1.0, 2.0], [1.0])


def test_docstring_examples_run():
    for module in (stats, published):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_use_table_grids_are_the_published_points(conf=Path(__file__).parents[2] / "conf"):
    """perturbation=use_table sweeps the USE table's magnitudes: its YAML either copies published.py's points or
    reads them from published.use_table_grids() through a resolver."""
    grids = published.use_table_grids()
    assert grids == {kind: list(points) for kind, (points, _) in published.USE_POINTS.items()}
    assert all(len(grids[k]) == len(published.USE_POINTS[k][1]["ReLU_Bias"]) for k in grids)
    raw = OmegaConf.to_container(OmegaConf.load(conf / "perturbation" / "use_table.yaml"), resolve=False)["grids"]
    for kind, points in grids.items():
        spec = raw if isinstance(raw, str) else raw[kind]
        if isinstance(spec, str):  # an interpolation of the resolver that calls use_table_grids()
            assert "use_table_grids" in spec, kind
        else:
            assert [float(x) for x in spec] == pytest.approx(points, abs=1e-12), kind
    from dmlight.config import compose_config

    composed = compose_config(["perturbation=use_table"]).perturbation.grids
    assert {k: list(v) for k, v in composed.items()} == grids  # what a sweep gets
