"""The papers' tables from the runs, as frames (accuracies in %, differences in pp), each with the published numbers
beside ours: baseline, USE points, perturbation curves, LEARN accuracy, pairwise tests, units, diverged runs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dmlight import published as pub
from dmlight.report.groups import (SPLIT, diverged_rows, diverged_text, group_key, groups, home_experiment, nearest,
                                   pick, published_baseline)
from dmlight.report.load import PROVENANCE_COLUMNS, Runs, log, pct
from dmlight.report.thresholds import THRESHOLDS, Thresholds
from dmlight.stats import cohens_d, independent_ttest, independent_ttest_from_stats, mean_ci, mean_std, paired_ttest

# Pairs compared in the LEARN pairwise table (a, b): t and d are for a - b.
_LEARN_BASE_PAIRS = (("ReLU", "Abs"), ("ReLU2", "ReLU"), ("ReLU2-Neg", "ReLU"), ("Abs2", "Abs"),
                     ("Abs2-Neg", "Abs"), ("Abs2-Neg", "Abs2"))
DEFAULT_PAIRS = (_LEARN_BASE_PAIRS
                 + tuple((a + "_Bias", b + "_Bias") for a, b in _LEARN_BASE_PAIRS)
                 + (("ReLU-L2", "ReLU"), ("ReLU-L2-Neg", "ReLU"), ("Abs-L2", "Abs"), ("Abs-L2-Neg", "Abs"),
                    ("ReLU-L2-Neg", "ReLU-L2"), ("Abs-L2-Neg", "Abs-L2")))


def divergence_table(data: Runs) -> pd.DataFrame:
    """Per (experiment, model): finished runs (`runs`), how many completed and how many diverged, the first and last
    divergence epoch, the non-finite losses seen, and the text the report prints
    ('2 of 20 diverged at epochs 39-70')."""
    rows = []
    for exp, model in groups(data):
        n_ok = int(((data.runs.experiment == exp) & (data.runs.model == model)).sum())
        d = diverged_rows(data, exp, model)
        e = d.diverged_epoch.dropna()
        losses = d.diverged_loss.fillna("").astype(str).replace("", "?").value_counts()
        rows.append({"experiment": exp, "model": model, "runs": n_ok + len(d), "complete": n_ok, "diverged": len(d),
                     "first_diverged_epoch": e.min() if len(e) else math.nan,
                     "last_diverged_epoch": e.max() if len(e) else math.nan,
                     "diverged_losses": ", ".join(f"{k} x{v}" for k, v in sorted(losses.items())),
                     "diverged_text": diverged_text(n_ok + len(d), d.diverged_epoch)})
    out = pd.DataFrame(rows, columns=["experiment", "model", "runs", "complete", "diverged", "first_diverged_epoch",
                                      "last_diverged_epoch", "diverged_losses", "diverged_text"])
    return out.astype({"first_diverged_epoch": "Int64", "last_diverged_epoch": "Int64"})  # 39, not 39.0


def diverged_runs_table(data: Runs) -> pd.DataFrame:
    """One row per diverged run: path, experiment, model, seed, diverged_epoch, diverged_loss and its settings."""
    d = data.diverged.copy()
    d["_key"] = [(group_key((e, m)), str(s)) for e, m, s in zip(d.experiment, d.model, d.seed)]
    d = d.sort_values("_key").drop(columns="_key").reset_index(drop=True)
    return d.astype({"diverged_epoch": "Float64"}).astype({"diverged_epoch": "Int64"})


def runs_table(data: Runs) -> pd.DataFrame:
    """One row per complete run, accuracies in %."""
    df = data.runs.copy()
    for c in ("train_acc", "test_acc"):
        df[c + "_pct"] = pct(df.pop(c))
    return df.sort_values(["experiment", "model", "seed"], key=lambda s: s.map(str)).reset_index(drop=True)


def provenance_table(data: Runs) -> pd.DataFrame:
    """What produced the complete runs: one row per distinct (dmlight, commit, versions, device), with its run count."""
    cols = [c for c in PROVENANCE_COLUMNS if c != "device"]
    if data.runs.empty:
        return pd.DataFrame(columns=[*cols, "runs", "experiments"])
    g = data.runs.fillna("").astype({c: str for c in cols}).groupby(cols, sort=True)
    return pd.DataFrame([{**dict(zip(cols, key)), "runs": len(rows),
                          "experiments": ", ".join(sorted(rows.experiment.astype(str).unique()))}
                         for key, rows in g]).reset_index(drop=True)


def baseline_table(data: Runs) -> pd.DataFrame:
    """Per (experiment, model): n complete runs (the means are over these), runs finished in all and how many of them
    diverged (with the text '2 of 5 diverged at epochs 39-70'), setting, train/test accuracy % and train loss
    (mean, std), published beside. A model whose every run diverged has a row with n = 0 and no means."""
    rows = []
    for exp, model in groups(data):
        g = data.runs[(data.runs.experiment == exp) & (data.runs.model == model)]
        d = diverged_rows(data, exp, model)
        both = pd.concat([g[["data", "preprocess", "epochs"]], d[["data", "preprocess", "epochs"]]])
        pubd = published_baseline(exp, model)
        row = {"experiment": exp, "model": model, "n": len(g), "runs": len(g) + len(d), "diverged": len(d),
               "diverged_text": diverged_text(len(g) + len(d), d.diverged_epoch),
               "seeds": " ".join(str(s) for s in sorted(g.seed.dropna().unique())),
               "data": ",".join(sorted(both.data.dropna().astype(str).unique())),
               "preprocess": ",".join(sorted(both.preprocess.dropna().astype(str).unique())),
               "epochs": ",".join(str(e) for e in sorted(both.epochs.dropna().unique()))}
        for col, scale in (("train_acc", 100.0), ("test_acc", 100.0), ("train_loss", 1.0)):
            mean, std, _ = mean_std(g[col] * scale)
            name = col.replace("_acc", "_acc_pct")
            row[name + "_mean"], row[name + "_std"] = mean, std
        for col, key in (("train_acc_pct", "train"), ("test_acc_pct", "test"), ("train_loss", "loss")):
            m, s = pubd.get(key, (math.nan, math.nan))
            row[f"published_{col}_mean"], row[f"published_{col}_std"] = m, s
        row["published_source"] = pubd["source"]
        rows.append(row)
    cols = ["experiment", "model", "n", "runs", "diverged", "diverged_text", "seeds", "data", "preprocess",
            "epochs"] + [
        f"{p}{c}_{s}" for p in ("", "published_") for c in ("train_acc_pct", "test_acc_pct", "train_loss")
        for s in ("mean", "std")] + ["published_source"]
    return pd.DataFrame(rows, columns=cols)


def train_rows(data: Runs) -> pd.DataFrame:
    """Whole-layer sweep rows on the USE paper's split."""
    p = data.perturbation
    return p[(p.split == SPLIT) & (p.unit == "all")]


def baseline_acc(rows: pd.DataFrame) -> pd.Series:
    """Each run's unperturbed accuracy (its 'baseline' row), indexed by run."""
    b = rows[rows.kind == "baseline"]
    return b.groupby("run").accuracy.last()


def use_point_table(data: Runs, kind: str, th: Thresholds = THRESHOLDS) -> pd.DataFrame:
    """Mean train accuracy (%) per model at the USE paper's points of one kind, with a paired t-test
    of each run's perturbed accuracy against its own unperturbed accuracy, and the published value.

        >>> use_point_table(load_runs(["outputs/use_distance_metrics"]), "offset")  # doctest: +SKIP
    """
    points, published = pub.USE_POINTS[kind]
    rows = []
    p = train_rows(data)
    for (exp, model, site), g in sorted(p.groupby(["experiment", "model", "site"]), key=lambda kv: group_key(kv[0])):
        base = baseline_acc(g)
        m, lo, hi = mean_ci(pct(base))
        pub_base = pub.USE_BASELINE.get(model, {}).get("train", (math.nan,))[0]
        rows.append({"experiment": exp, "model": model, "site": site, "kind": kind, "point_pct": math.nan,
                     "magnitude_used": math.nan, "n": len(base), "mean_pct": m, "ci_lo_pct": lo, "ci_hi_pct": hi,
                     "drop_pp": 0.0 if len(base) else math.nan, "t": math.nan, "p": math.nan,
                     "published_pct": pub_base})
        k = g[g.kind == kind]
        for point, pub_value in zip(points, published.get(model, [math.nan] * len(points))):
            used = nearest(k.magnitude, point, th.match_rel_tol)
            acc = k[np.isclose(k.magnitude, used)].groupby("run").accuracy.last() if used is not None else pd.Series()
            pair = pd.concat([acc.rename("acc"), base.rename("base")], axis=1, join="inner")
            m, lo, hi = mean_ci(pct(pair.acc))
            t, pv = paired_ttest(pair.acc, pair.base)
            rows.append({"experiment": exp, "model": model, "site": site, "kind": kind, "point_pct": point * 100,
                         "magnitude_used": used if used is not None else math.nan, "n": len(pair),
                         "mean_pct": m, "ci_lo_pct": lo, "ci_hi_pct": hi,
                         "drop_pp": pct(pair.base - pair.acc).mean() if len(pair) else math.nan,
                         "t": t, "p": pv, "published_pct": pub_value})
    return pd.DataFrame(rows, columns=["experiment", "model", "site", "kind", "point_pct", "magnitude_used", "n",
                                       "mean_pct", "ci_lo_pct", "ci_hi_pct", "drop_pp", "t", "p", "published_pct"])


def perturbation_curves(data: Runs) -> pd.DataFrame:
    """Accuracy (%) per (experiment, model, site, kind, split, magnitude): mean and 95% CI over runs.
    Whole-layer rows only (unit 'all')."""
    p = data.perturbation[data.perturbation.unit == "all"]
    rows = []
    for key, g in p.groupby(["experiment", "model", "site", "kind", "split", "magnitude"], dropna=False):
        m, lo, hi = mean_ci(pct(g.accuracy))
        rows.append(dict(zip(["experiment", "model", "site", "kind", "split", "magnitude"], key),
                         n=g.run.nunique(), mean_pct=m, ci_lo_pct=lo, ci_hi_pct=hi))
    return pd.DataFrame(rows, columns=["experiment", "model", "site", "kind", "split", "magnitude", "n",
                                       "mean_pct", "ci_lo_pct", "ci_hi_pct"])


def learn_table(data: Runs) -> pd.DataFrame:
    """Test accuracy (%) per (experiment, model): mean, std, 95% CI (Student t, SEM) over the n complete runs, runs
    finished and diverged beside them; published beside."""
    rows = []
    for exp, model in groups(data):
        g = data.runs[(data.runs.experiment == exp) & (data.runs.model == model)]
        d = diverged_rows(data, exp, model)
        mean, std, n = mean_std(pct(g.test_acc))
        _, lo, hi = mean_ci(pct(g.test_acc))
        pm, ps = published_baseline(exp, model).get("test", (math.nan, math.nan))
        dm, ds = pub.LEARN_TEST_DISCUSSION.get(model, (math.nan, math.nan))
        rows.append({"experiment": exp, "model": model, "n": n, "runs": len(g) + len(d), "diverged": len(d),
                     "diverged_text": diverged_text(len(g) + len(d), d.diverged_epoch),
                     "mean_pct": mean, "std_pct": std,
                     "ci_lo_pct": lo, "ci_hi_pct": hi, "published_mean_pct": pm, "published_std_pct": ps,
                     "published_discussion_mean_pct": dm, "published_discussion_std_pct": ds})
    return pd.DataFrame(rows, columns=["experiment", "model", "n", "runs", "diverged", "diverged_text",
                                       "mean_pct", "std_pct", "ci_lo_pct", "ci_hi_pct",
                                       "published_mean_pct", "published_std_pct", "published_discussion_mean_pct",
                                       "published_discussion_std_pct"])


def model_accuracies(data: Runs, model: str):
    """(experiment, test accuracies in %) of `model`, from its home experiment if it ran there.
    (None, empty) if it never ran."""
    r = data.runs[data.runs.model == model]
    exp = pick(r.experiment.value_counts().to_dict(), home_experiment(model))
    if exp is None:
        return None, pd.Series(dtype=float)
    return exp, pct(r[r.experiment == exp].test_acc).dropna()


def pairs_table(data: Runs, pairs=DEFAULT_PAIRS) -> pd.DataFrame:
    """Independent two-sample t-tests (pooled variance) and Cohen's d between models' test accuracies (%), for the
    pairs where both models ran; published t, p, |d| beside, and the t that the published means +- std imply.

        >>> pairs_table(load_runs(["outputs/learn_distance_metrics"]), [("ReLU", "Abs")])  # doctest: +SKIP
    """
    published = {(a, b): (t, p, d) for a, b, t, p, d in pub.LEARN_PAIRS}
    rows = []
    for a, b in dict.fromkeys(tuple(p) for p in pairs):  # keeps order, drops repeats
        (exp_a, xa), (exp_b, xb) = model_accuracies(data, a), model_accuracies(data, b)
        if exp_a is None or exp_b is None:
            if (a, b) not in DEFAULT_PAIRS:  # the user asked for it: say why it is not in the table
                log(f"pair {a}:{b} skipped: no complete runs of {a if exp_a is None else b}")
            continue
        t, dof, p = independent_ttest(xa, xb)
        pt, pp, pd_ = published.get((a, b), (math.nan, "", math.nan))
        if a in pub.LEARN_TEST and b in pub.LEARN_TEST:
            implied = independent_ttest_from_stats(*pub.LEARN_TEST[a], pub.N_RUNS, *pub.LEARN_TEST[b], pub.N_RUNS)[0]
        else:
            implied = math.nan
        rows.append({"a": a, "b": b, "experiment_a": exp_a, "experiment_b": exp_b, "n_a": len(xa), "n_b": len(xb),
                     "diverged_a": len(diverged_rows(data, exp_a, a)),
                     "diverged_b": len(diverged_rows(data, exp_b, b)),
                     "mean_a_pct": xa.mean(), "mean_b_pct": xb.mean(), "diff_pp": xa.mean() - xb.mean(),
                     "t": t, "dof": dof, "p": p, "d": cohens_d(xa, xb),
                     "published_t": pt, "published_p": pp, "published_abs_d": pd_, "published_means_imply_t": implied})
    return pd.DataFrame(rows, columns=["a", "b", "experiment_a", "experiment_b", "n_a", "n_b", "diverged_a",
                                       "diverged_b", "mean_a_pct",
                                       "mean_b_pct", "diff_pp", "t", "dof", "p", "d", "published_t", "published_p",
                                       "published_abs_d", "published_means_imply_t"])


def units_table(data: Runs) -> pd.DataFrame:
    """Dead and rarely active units per (experiment, model, layer, split): counts mean +- std over runs."""
    rows = []
    u = data.units
    for (exp, model, layer, split), g in sorted(u.groupby(["experiment", "model", "layer", "split"]),
                                                key=lambda kv: (group_key(kv[0][:2]), kv[0][2], kv[0][3] != "train")):
        dm, ds, n = mean_std(g.dead)
        rm, rs, _ = mean_std(g.rare)
        rows.append({"experiment": exp, "model": model, "layer": layer, "split": split, "n_runs": n,
                     "units": g.n.max(), "dead_mean": dm, "dead_std": ds, "rare_mean": rm, "rare_std": rs,
                     "dead_pct_mean": (g.dead / g.n).mean() * 100,
                     "published": pub.LEARN_DEAD.get((model, layer), "") if split == "train" else ""})
    return pd.DataFrame(rows, columns=["experiment", "model", "layer", "split", "n_runs", "units", "dead_mean",
                                       "dead_std", "rare_mean", "rare_std", "dead_pct_mean", "published"])
