"""The few statistics the papers use: mean with a Student-t CI, paired and independent t-tests, Cohen's d.

Plain functions of sequences of numbers (lists, numpy arrays, pandas Series). NaN values are
dropped before computing (a run that is missing a number does not poison the others; for the
paired test a pair is dropped when either side is NaN). Degenerate inputs never raise: they
return NaN where the statistic is undefined, as each docstring says:

- fewer than 2 values: no spread, so std, CI bounds, t, p and d are NaN;
- zero variance (all values equal, up to float rounding): the CI collapses to the mean
  (lo == hi == mean), but t, p and d are NaN, because they divide by a zero spread.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


def _is_zero(spread: float, *samples) -> bool:
    """A spread that is zero up to float rounding (0.9 - 0.8 and 0.8 - 0.7 differ in the 17th digit)."""
    scale = max([1.0] + [float(np.nanmax(np.abs(x))) for x in samples if np.size(x) and not np.isnan(x).all()])
    return not spread > 1e-12 * scale  # also true for NaN


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n-1 in the denominator) and count, NaNs dropped.

    std is NaN for fewer than 2 values; mean is NaN for none.

        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0, 3)
    """
    x = _finite(values)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


def mean_ci(values, conf: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided `conf` confidence interval by Student's t (n-1 dof, SEM = s/sqrt(n)).

    Returns (mean, lo, hi). One value: (x, nan, nan). No values: all NaN. All values equal: lo == hi == mean.

        >>> m, lo, hi = mean_ci([1.0, 2.0, 3.0])
        >>> round(m, 3), round(lo, 3), round(hi, 3)
        (2.0, -0.484, 4.484)
    """
    mean, std, n = mean_std(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + conf / 2, n - 1)) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_ttest(a, b) -> tuple[float, float]:
    """Paired two-sided t-test of a against b (same runs, in the same order): t = mean(d) / (sd(d)/sqrt(n)), d = a - b.

    Returns (t, p), dof = n - 1. NaN when fewer than 2 pairs or when every difference is the same
    (sd(d) = 0, e.g. a perturbation that changed no prediction in any run).

        >>> t, p = paired_ttest([0.90, 0.80, 0.85], [0.95, 0.90, 0.92])
        >>> round(t, 2), round(p, 3)
        (-5.05, 0.037)
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_ttest needs one value per run on both sides; got {a.size} and {b.size} values")
    d = a - b
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2 or _is_zero(d.std(ddof=1), a, b):
        return math.nan, math.nan
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    p = 2 * _st.t.sf(abs(t), n - 1)
    return float(t), float(p)


def independent_ttest(a, b) -> tuple[float, float, float]:
    """Two-sample two-sided t-test with pooled variance (Student's, as the LEARN paper): t for mean(a) - mean(b).

    Returns (t, dof, p) with dof = n_a + n_b - 2. t and p are NaN when dof < 1 or the pooled
    variance is 0; dof is NaN when a side is empty.

        >>> t, dof, p = independent_ttest([96.6, 96.4, 96.8], [95.9, 95.7, 96.1])
        >>> round(t, 2), dof, round(p, 4)
        (4.29, 4.0, 0.0128)
    """
    a, b = _finite(a), _finite(b)
    (mean_a, std_a, n_a), (mean_b, std_b, n_b) = mean_std(a), mean_std(b)
    if n_a and n_b and _is_zero(_pooled_sd(std_a, n_a, std_b, n_b), a, b):
        return math.nan, float(n_a + n_b - 2), math.nan
    return _pooled_t(mean_a, std_a, n_a, mean_b, std_b, n_b)


def independent_ttest_from_stats(mean_a, std_a, n_a, mean_b, std_b, n_b) -> tuple[float, float, float]:
    """The same test from published summaries (mean, sample std, n per side): what a table's numbers imply.

        >>> t, dof, p = independent_ttest_from_stats(96.62, 0.17, 20, 95.87, 0.22, 20)
        >>> round(t, 1), dof
        (12.1, 38.0)
    """
    return _pooled_t(mean_a, std_a, n_a, mean_b, std_b, n_b)


def _pooled_sd(std_a, n_a, std_b, n_b) -> float:
    dof = n_a + n_b - 2
    if n_a < 1 or n_b < 1 or dof < 1:
        return math.nan
    # A side with one value has no variance of its own and contributes 0 to the pooled sum.
    ss = (n_a - 1) * (std_a if n_a > 1 else 0.0) ** 2 + (n_b - 1) * (std_b if n_b > 1 else 0.0) ** 2
    return math.sqrt(ss / dof)


def _pooled_t(mean_a, std_a, n_a, mean_b, std_b, n_b) -> tuple[float, float, float]:
    if n_a < 1 or n_b < 1:
        return math.nan, math.nan, math.nan
    dof = float(n_a + n_b - 2)
    sp = _pooled_sd(std_a, n_a, std_b, n_b)
    if not sp > 0:  # also catches NaN
        return math.nan, dof, math.nan
    t = (mean_a - mean_b) / (sp * math.sqrt(1 / n_a + 1 / n_b))
    return float(t), dof, float(2 * _st.t.sf(abs(t), dof))


def cohens_d(a, b) -> float:
    """Cohen's d = (mean(a) - mean(b)) / pooled sd, signed (positive when a is larger).

    NaN when the pooled sd is 0 or undefined (n_a + n_b < 3). The LEARN paper reports |d|.

        >>> round(cohens_d([96.6, 96.4, 96.8], [95.9, 95.7, 96.1]), 2)
        3.5
    """
    mean_a, std_a, n_a = mean_std(a)
    mean_b, std_b, n_b = mean_std(b)
    sp = _pooled_sd(std_a, n_a, std_b, n_b)
    if _is_zero(sp, _finite(a), _finite(b)):
        return math.nan
    return float((mean_a - mean_b) / sp)
