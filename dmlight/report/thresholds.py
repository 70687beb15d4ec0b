"""The scorecard's thresholds: each one's value and why, stated once, in the fields of `Thresholds`.

report.md's Notes, `python -m dmlight.report --help` and the W&B config list them from here, and every claim's
rule (the scorecard's `threshold` column) names the fields it uses with their values (`Thresholds.named`).

They are chosen to work with few seeds and small data (e.g. mnist5k with 3 seeds): they compare effect sizes in
percentage points instead of relying on significance tests, which 3 seeds cannot power (t-tests are still computed
and shown). With the published means every claim is replicated (the tests check this). Note that LEARN claim 1
("no significant difference") held to a t-test would fail on the paper's own table: its means +- std imply t = 12
with 20 runs each, not the printed t = 1.14 (see the pairwise table).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, fields


def _why(default: float, why: str):
    return field(default=default, metadata={"why": why})


@dataclass(frozen=True)
class Thresholds:
    """Every number the scorecard compares against, with why it is that number (printed beside it in report.md).

        >>> Thresholds(keep_pp=0.7).named("keep_pp")
        'keep_pp=0.7'
    """
    keep_pp: float = _why(0.5, (
        "'keeps baseline' = mean drop from each run's own unperturbed train accuracy <= this (pp); the paper's "
        "kept points drop <= 0.39 pp, its first lost ReLU point 0.55 pp; with 3 seeds a t-test cannot show "
        "'no change'"))
    drop_pp: float = _why(1.0, (
        "'hurts' / Abs 'drops below 99%' = mean drop >= this (pp); 99% of a 99.99% baseline is a ~1 pp drop"))
    sensitivity_ratio: float = _why(3.0, (
        "'far larger' = worst drop at offset ±10% >= this x the drop at scale 10% and clip 50% "
        "(published: ReLU 8.8x, Abs 48x)"))
    floor_pp: float = _why(0.1, (
        "a reference std or drop below this counts as this (pp), so a perfect reference does not make a ratio "
        "infinite"))
    same_pp: float = _why(1.0, (
        "'do not differ' / 'matches' / 'near' / 'gap disappears' = |difference of means| <= this (pp), 'worse' = "
        "more than this below; published ReLU vs Abs differ by 0.75 pp"))
    collapse_pp: float = _why(10.0, (
        "'large drop' = at least this (pp) below ReLU; published 40 pp, and one dead output unit costs ~10 pp"))
    variance_ratio: float = _why(3.0, (
        "'high variance' / 'more variable' = std >= this x the reference model's std (published: 12x and 113x)"))
    dead_output_frac: float = _why(0.2, (
        "'many dead output units' = mean fraction of ReLU2's output units dead on the training set >= this "
        "(published 33%, the paper's notes 22%)"))
    small_std_pp: float = _why(0.5, (
        "'small variance' = std <= this (pp); published OffsetL2 stds <= 0.14, the linear-head baselines' 0.17-0.22"))
    beat_pp: float = _why(0.0, (
        "'beat the baselines' = mean test accuracy above the same-activation LEARN baseline by more than this (pp)"))
    match_rel_tol: float = _why(0.25, (
        "a published perturbation point uses the nearest swept magnitude within this relative distance "
        "(the authors' log grid steps by 7%); tables show the magnitude used"))

    # ---- Beyond the papers (the study, dmlight/report/study.py; docs/study.md)
    study_change: float = _why(0.5, (
        "kinds are compared at this equal size of change (mean relative change ||act(h')-act(h)||/||act(h)|| of the "
        "layer's output over the training rows): half the layer's output moved; every kind of the study grid reaches "
        "it (scale and clip go to 1, offset past it), so no kind is compared outside its own points"))
    study_floor_pct: float = _why(80.0, (
        "'not trained' = mean train accuracy of the setting's seeds below this (%): the papers' nets reach 98-100%, "
        "an MLP that fits mnist5k or a Fashion-MNIST subset passes 85% in the quick budget; below 80% the curves "
        "describe a half-trained net, and no verdict is given"))
    study_ratio: float = _why(2.0, (
        "'distance-coded' = the 95% CI over seeds of distance drop / intensity drop (at study_change) lies above "
        "this; 'intensity-coded' = below 1/this; otherwise 'mixed'. The published USE ratio is 8.8x (ReLU) and 48x "
        "(Abs) at the papers' points; 2x is a clear majority of the effect, not noise"))

    def named(self, name: str) -> str:
        """'name=value', as a claim's rule cites a threshold."""
        return f"{name}={getattr(self, name)}"

    def values(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def rows(self) -> list[tuple[str, float, str]]:
        """(name, value, why) of every threshold, in order."""
        return [(f.name, getattr(self, f.name), f.metadata["why"]) for f in fields(self)]

    def text(self) -> str:
        """Every threshold as 'name = value  why', one per line (the CLI's help lists them so).

            >>> Thresholds().text().split()[:4]
            ['keep_pp', '=', '0.5', "'keeps"]
        """
        width = max(len(f"{n} = {v}") for n, v, _ in self.rows()) + 6
        return "\n".join(textwrap.fill(why, 116, initial_indent=f"    {f'{n} = {v}':<{width - 4}}",
                                        subsequent_indent=" " * width) for n, v, why in self.rows())


THRESHOLDS = Thresholds()
