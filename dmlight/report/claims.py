"""The scorecard: each numbered claim of shared/PAPERS.md is one function that returns its checks, its evidence and
its rule in words, registered once in CLAIMS with the claim's text and the models it reads.

A claim is "replicated" when every check ran and passed, "not replicated" when a check failed, "not run: diverged"
when it could not run and a model it needs diverged on every run, and "not run" when a model or perturbation point
it needs is otherwise absent. USE claims use each run's training-set accuracy against its own unperturbed accuracy
(the paper's choice of split), from pre-activation sweeps (the paper's site), preferring experiment
use_distance_metrics. LEARN claims use test accuracy, each model from the experiment the paper trains it in
(learn_distance_metrics, learn_bias, offset_l2), else from the one with most runs of it. The numbers a rule compares
against are the fields of `Thresholds` (thresholds.py), each stated there once with its reason.

To add a claim: write a function `(data, th) -> Result` below and one `Claim(...)` line in CLAIMS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import pandas as pd

from dmlight import published as pub
from dmlight.report import checks as ck
from dmlight.report.load import Runs
from dmlight.report.thresholds import THRESHOLDS, Thresholds
from dmlight.stats import independent_ttest

BIAS = "_Bias"  # LEARN claim 5 repeats claims 1-4 on the models with a bias in the head


class Result(NamedTuple):
    checks: list      # True (passed), False (failed) or None (could not run), one per check
    evidence: list    # the numbers the checks rest on, in words
    rule: str         # what the checks hold the numbers to, naming each threshold with its value


@dataclass(frozen=True)
class Claim:
    paper: str
    number: int
    text: str                 # the claim as shared/PAPERS.md words it
    check: Callable           # (data, thresholds) -> Result; LEARN claims 1-4 also take a model-name suffix
    models: tuple             # the models its checks read: when one diverged on every run, "not run: diverged"
    site: str | None = None   # the Perturbation site its sweeps come from (USE); None: test accuracy


# ----------------------------------------------------------------------------- USE

def _use_keeps(data: Runs, th: Thresholds, kind: str, lo: float, hi: float):
    checks, ev = [], []
    for model in pub.USE_MODELS:
        got = ck.use_drops(data, model, kind)
        if got is None:
            checks.append(None)
            ev.append(ck.no_sweep(data, model, f"no {kind} sweep"))
            continue
        label, drops = got
        ok, text = ck.keeps(drops, lo, hi, th, kind)
        checks.append(ok)
        ev.append(f"{label}: {text}")
    return checks, ev


def use_1(data: Runs, th: Thresholds = THRESHOLDS) -> Result:
    """Both models keep baseline accuracy for scale 10%..1000%."""
    return Result(*_use_keeps(data, th, "scale", 0.10, 10.0),
                  f"mean drop <= {th.named('keep_pp')} pp at every scale point 10%..1000% (train set)")


def use_2(data: Runs, th: Thresholds = THRESHOLDS) -> Result:
    """Both models keep baseline accuracy for clip at 50% and above."""
    return Result(*_use_keeps(data, th, "clip", 0.50, math.inf),
                  f"mean drop <= {th.named('keep_pp')} pp at every clip point >= 50% (train set)")


# Per model: offsets that keep baseline (lo, hi); |offset| from which it must be lost; the threshold that loss is
# held to, and whether strictly. "ReLU keeps baseline only within about -3%..+2%" (the paper's next points out are
# -5% and +5%): beyond, its drop exceeds keep_pp. "Abs drops below 99% outside -1%..+1%" (next out: -2%, +2%):
# beyond, its drop is at least drop_pp.
USE_CLAIM_3_WINDOWS = {"ReLU_Bias": (-0.03, 0.02, 0.05, "keep_pp", True),
                       "Abs_Bias": (-0.01, 0.01, 0.02, "drop_pp", False)}


def use_3(data: Runs, th: Thresholds = THRESHOLDS) -> Result:
    """Small offsets hurt: each model keeps baseline only inside its window and loses it outside."""
    checks, ev = [], []
    for model in pub.USE_MODELS:
        got = ck.use_drops(data, model, "offset")
        if got is None:
            checks.append(None)
            ev.append(ck.no_sweep(data, model, "no offset sweep"))
            continue
        label, drops = got
        keep_lo, keep_hi, edge, lost, strict = USE_CLAIM_3_WINDOWS[model]
        ok, text = ck.keeps(drops, keep_lo, keep_hi, th, "offset")
        oks, texts = ck.loses_outside(drops, edge, getattr(th, lost), strict, th, "offset")
        checks += [ok] + oks
        ev.append(f"{label}: {text}; " + "; ".join(texts))
    return Result(checks, ev, (
        f"ReLU: drop <= {th.named('keep_pp')} pp for offsets in -3%..+2% and > keep_pp at |offset| >= 5%; "
        f"Abs: drop <= keep_pp in -1%..+1% and >= {th.named('drop_pp')} pp at |offset| >= 2%"))


def use_4(data: Runs, th: Thresholds = THRESHOLDS) -> Result:
    """Offset (distance) sensitivity is far larger than scale/clip (intensity) sensitivity."""
    checks, ev = [], []
    for model in pub.USE_MODELS:
        got = {kind: ck.use_drops(data, model, kind) for kind in pub.USE_KINDS}
        if any(v is None for v in got.values()):
            checks.append(None)
            ev.append(ck.no_sweep(data, model, "missing sweep(s) " + ", ".join(k for k, v in got.items() if v is None)))
            continue
        label = got["offset"][0]
        s = ck.sensitivity({kind: v[1] for kind, v in got.items()}, th)
        if s is None:
            checks.append(None)
            ev.append(f"{label}: offset ±10%, scale 10% or clip 50% not swept")
            continue
        checks.append(bool(s.distance >= th.drop_pp and s.ratio >= th.sensitivity_ratio))
        ev.append(f"{label}: worst drop at offset ±10% {s.distance:.2f} pp vs scale 10% "
                  f"{s.at[('scale', 0.10)]:.2f} pp / clip 50% {s.at[('clip', 0.50)]:.2f} pp: ratio {s.ratio:.1f}x")
    return Result(checks, ev, (
        f"worst drop at offset ±10% >= {th.named('drop_pp')} pp and >= {th.named('sensitivity_ratio')} x "
        f"max(drop at scale 10%, clip 50%, {th.named('floor_pp')})"))


# ----------------------------------------------------------------------------- LEARN

def _stats(data: Runs, sfx: str, *names):
    return [ck.acc_stats(data, name + sfx) for name in names]


def _missing_text(data: Runs, sfx: str, *named) -> str:
    """'missing ReLU2 (3 of 3 diverged ...)' for the (name, stats) pairs whose stats are None."""
    return "missing " + ", ".join(ck.missing(data, *((s, name + sfx) for name, s in named)))


def learn_1(data: Runs, th: Thresholds = THRESHOLDS, sfx: str = "") -> Result:
    """ReLU and Abs baselines do not differ (by more than same_pp; the t-test is shown, not used)."""
    rule = f"|mean test acc ReLU - Abs| <= {th.named('same_pp')} pp (t-test shown, not used: few seeds)"
    relu, abs_ = _stats(data, sfx, "ReLU", "Abs")
    if relu is None or abs_ is None:
        return Result([None], [_missing_text(data, sfx, ("ReLU", relu), ("Abs", abs_))], rule)
    diff = relu["mean"] - abs_["mean"]
    t, dof, p = independent_ttest(relu["x"], abs_["x"])
    return Result([bool(abs(diff) <= th.same_pp)],
                  [f"{relu['text']} vs {abs_['text']}: difference {diff:+.2f} pp (t={t:.2f}, dof={dof:.0f}, p={p:.3g})"],
                  rule)


def learn_2(data: Runs, th: Thresholds = THRESHOLDS, sfx: str = "") -> Result:
    """ReLU2 collapses: far below ReLU, far more variable, with many dead output units."""
    rule = (f"ReLU - ReLU2 >= {th.named('collapse_pp')} pp; std(ReLU2) >= {th.named('variance_ratio')} x "
            f"max(std(ReLU), {th.named('floor_pp')}); dead output units (train) >= {th.named('dead_output_frac')}")
    relu, relu2 = _stats(data, sfx, "ReLU", "ReLU2")
    if relu is None or relu2 is None:
        return Result([None], [_missing_text(data, sfx, ("ReLU", relu), ("ReLU2", relu2))], rule)
    drop = relu["mean"] - relu2["mean"]
    checks, ev = [bool(drop >= th.collapse_pp)], [f"{relu2['text']} vs {relu['text']}: drop {drop:.2f} pp"]
    ok, text = ck.std_ratio(relu2, relu, th)
    checks.append(ok)
    ev.append(text)
    u = data.units
    u = u[(u.model == relu2["model"]) & (u.experiment == relu2["exp"]) & (u.layer == "output_activation")
          & (u.split == "train")]
    if not len(u):
        checks.append(None)
        ev.append("no output-unit counts in the ReLU2 summaries")
    else:
        frac = (u.dead / u.n).mean()
        checks.append(bool(frac >= th.dead_output_frac))
        ev.append(f"dead output units (train) {frac * 100:.1f}% ({u.dead.mean():.2f} of {u.n.max():.0f})")
    return Result(checks, ev, rule)


def learn_3(data: Runs, th: Thresholds = THRESHOLDS, sfx: str = "") -> Result:
    """ReLU2-Neg recovers to near ReLU."""
    rule = f"ReLU - ReLU2-Neg <= {th.named('same_pp')} pp"
    relu, neg = _stats(data, sfx, "ReLU", "ReLU2-Neg")
    if relu is None or neg is None:
        return Result([None], [_missing_text(data, sfx, ("ReLU", relu), ("ReLU2-Neg", neg))], rule)
    gap = relu["mean"] - neg["mean"]
    return Result([bool(gap <= th.same_pp)], [f"{neg['text']} vs {relu['text']}: {gap:.2f} pp below"], rule)


def learn_4(data: Runs, th: Thresholds = THRESHOLDS, sfx: str = "") -> Result:
    """Abs2 matches Abs; Abs2-Neg is worse than Abs2 and more variable."""
    rule = (f"|Abs2 - Abs| <= {th.named('same_pp')} pp; Abs2 - Abs2-Neg > same_pp; std(Abs2-Neg) >= "
            f"{th.named('variance_ratio')} x max(std(Abs2), {th.named('floor_pp')})")
    abs_, abs2, neg = _stats(data, sfx, "Abs", "Abs2", "Abs2-Neg")
    checks, ev = [], []
    if abs_ is None or abs2 is None or neg is None:
        ev.append(_missing_text(data, sfx, ("Abs", abs_), ("Abs2", abs2), ("Abs2-Neg", neg)))
    if abs_ is not None and abs2 is not None:
        diff = abs2["mean"] - abs_["mean"]
        checks.append(bool(abs(diff) <= th.same_pp))
        ev.append(f"{abs2['text']} vs {abs_['text']}: difference {diff:+.2f} pp")
    else:
        checks.append(None)
    if abs2 is not None and neg is not None:
        gap = abs2["mean"] - neg["mean"]
        checks.append(bool(gap > th.same_pp))
        ev.append(f"{neg['text']}: {gap:.2f} pp below Abs2")
        ok, text = ck.std_ratio(neg, abs2, th)
        checks.append(ok)
        ev.append(text)
    else:
        checks.append(None)
    return Result(checks, ev, rule)


def learn_5(data: Runs, th: Thresholds = THRESHOLDS) -> Result:
    """Claims 1-4 hold on the models with a head bias too."""
    checks, ev = [], []
    for claim in LEARN_PATTERN:
        c, e, _ = claim.check(data, th, BIAS)
        checks += c
        gone = [m + BIAS for m in claim.models if ck.all_diverged(data, m + BIAS)]
        ev.append(f"claim {claim.number} with bias: {ck.status(c, gone)} ({'; '.join(e)})")
    return Result(checks, ev, "LEARN claims 1-4, same thresholds, on the _Bias models")


def learn_6(data: Runs, th: Thresholds = THRESHOLDS) -> Result:
    """OffsetL2 models beat their activation's baseline with a small std, with or without Neg alike."""
    checks, ev = [], []
    for act in ("ReLU", "Abs"):
        base, l2, l2neg = _stats(data, "", act, act + "-L2", act + "-L2-Neg")
        for m in (l2, l2neg):
            if m is None or base is None:
                continue
            checks.append(bool(m["mean"] - base["mean"] > th.beat_pp))
            ev.append(f"{m['text']}: {m['mean'] - base['mean']:+.2f} pp vs {act} {base['mean']:.2f}"
                      + (f" ({base['note']}, {base['exp']})" if base["note"] else ""))
            checks.append(None if math.isnan(m["std"]) else bool(m["std"] <= th.small_std_pp))
        if l2 is not None and l2neg is not None:
            gap = l2["mean"] - l2neg["mean"]
            checks.append(bool(abs(gap) <= th.same_pp))
            ev.append(f"{act}-L2 minus {act}-L2-Neg {gap:+.2f} pp")
        if base is None or l2 is None or l2neg is None:
            checks.append(None)
            ev.append(_missing_text(data, "", (act, base), (act + "-L2", l2), (act + "-L2-Neg", l2neg)))
    return Result(checks, ev, (
        f"each OffsetL2 mean > its activation's LEARN baseline + {th.named('beat_pp')} pp; "
        f"std <= {th.named('small_std_pp')} pp; |X-L2 - X-L2-Neg| <= {th.named('same_pp')} pp"))


# ----------------------------------------------------------------------------- the registry

_USE = dict(models=tuple(pub.USE_MODELS), site=ck.USE_SITE)
LEARN_PATTERN = (  # the claims LEARN claim 5 repeats with a head bias
    Claim("LEARN", 1, "ReLU and Abs baselines do not differ significantly.", learn_1, ("ReLU", "Abs")),
    Claim("LEARN", 2, "ReLU2 collapses (large drop, high variance) and has many dead output units.", learn_2,
          ("ReLU", "ReLU2")),
    Claim("LEARN", 3, "ReLU2-Neg recovers to near the ReLU baseline.", learn_3, ("ReLU", "ReLU2-Neg")),
    Claim("LEARN", 4, "Abs2 matches Abs; Abs2-Neg is worse and more variable than Abs2.", learn_4,
          ("Abs", "Abs2", "Abs2-Neg")),
)
CLAIMS = (
    Claim("USE", 1, "Both models keep baseline accuracy for scale from 10% to 1000% of the original output.", use_1,
          **_USE),
    Claim("USE", 2, "Both keep it for clip at 50% and above.", use_2, **_USE),
    Claim("USE", 3, "Small offsets hurt: ReLU keeps baseline only within about -3%..+2%; "
                    "Abs drops below 99% outside -1%..+1%.", use_3, **_USE),
    Claim("USE", 4, "Offset sensitivity (distance) is far larger than scale/clip sensitivity (intensity).", use_4,
          **_USE),
    *LEARN_PATTERN,
    Claim("LEARN", 5, "Including the bias does not change the pattern.", learn_5,
          tuple(dict.fromkeys(m + BIAS for c in LEARN_PATTERN for m in c.models))),
    Claim("LEARN", 6, "OffsetL2 models beat the baselines, with small variance, and the Neg gap disappears.", learn_6,
          ("ReLU", "Abs", "ReLU-L2", "ReLU-L2-Neg", "Abs-L2", "Abs-L2-Neg")),
)


def scorecard(data: Runs, th: Thresholds = THRESHOLDS) -> pd.DataFrame:
    """One row per numbered claim of the two papers: status (replicated / not replicated / not run /
    not run: diverged), the numbers it rests on (each model's diverged runs named beside its mean), and the rule
    it was held to.

        >>> scorecard(load_runs(["outputs"]))[["paper", "claim_id", "status"]]  # doctest: +SKIP
    """
    rows = []
    for claim in CLAIMS:
        checks, evidence, rule = claim.check(data, th)
        diverged = [m for m in claim.models if ck.all_diverged(data, m, claim.site)]
        rows.append({"paper": claim.paper, "claim_id": claim.number, "claim": claim.text,
                     "status": ck.status(checks, diverged), "evidence": "; ".join(evidence), "threshold": rule})
    return pd.DataFrame(rows, columns=["paper", "claim_id", "claim", "status", "evidence", "threshold"])
