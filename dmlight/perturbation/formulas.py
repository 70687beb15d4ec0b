"""Perturbation experiments: shift a trained network's hidden layer, measure its accuracy.

USE (arXiv:2411.17932), perturbed before the activation (site pre_activation).
Per hidden unit, min, max and range r = max - min of the *activation output* over the
training set; then for a magnitude p (a fraction, 0.05 = 5%):

    scale   p   s = p                                         intensity
    clip    p   c = min + p r        (upper bound, y = min(x, c))   intensity
    offset  p   s = (max - p r) / max,   t = p r              distance

Beyond the papers (the study's control, dmlight.published.STUDY_KINDS), also before the activation:

    unit_scale  p   s_i = p ** u_i,  u_i ~ U[0, 1] per unit from `unit_seed`   intensity

Each unit gets its own factor between p and 1, zero points kept. ReLU, Abs and leaky ReLU are
positively homogeneous (act(s h) = s act(h), s > 0), so a uniform scale passes through them and a
later layer's argmax moves only through its biases; unequal factors cannot be absorbed that way.

The offset keeps each unit's max where it was (s max + t = max) and moves its zero point
(x = 0) to p r. A unit whose max is 0 (never active on the training set) has no max to keep
and nothing to shift by: offset leaves it as it is (s = 1, t = 0).

LEARN (arXiv:2502.02103), perturbed after the activation (site post_activation):

    clamp_min  p   activations below v are raised to v      (distance-like)
    clamp_max  p   activations above v are lowered to v     (intensity-like)

with v = min + p r. For the whole layer (unit=null) min and max are the layer's, over all
units (one threshold, as the authors' code); for one unit (unit=k) they are unit k's own.

Every point is per-unit `clamp(x * scale + offset, lower, upper)` with the values of
`perturbation_values(kind, p, ranges)`. This module is the math and the grids;
dmlight.perturbation.engine runs a grid on a network and writes the results, dmlight.perturbation.probe
(DistanceProbe) locates the layer and runs grids during and after training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dmlight.errors import PerturbationError
from dmlight.published import LEARN_KINDS, STUDY_KINDS, USE_KINDS

KINDS = {**dict.fromkeys(USE_KINDS + STUDY_KINDS, "pre_activation"),
         **dict.fromkeys(LEARN_KINDS, "post_activation")}  # kind -> site
# Where a unit's range (min, max) is taken: the papers' activation output, or the site's own output (where the
# perturbation acts: the pre-activation values at pre_activation), which means the same for every activation.
RANGES = ("activation_output", "site_output")
UNIT_SEED = 2411  # the default draw of unit_scale's u_i
SPLITS = ("train", "val", "test")  # dmlight's own data has train and test; a DistanceProbe may have val


# ---------------------------------------------------------------- grids and config

def expand_grid(spec) -> list[float]:
    """A grid spec -> its sorted magnitudes, rounded to 12 decimals (so 5% reads 0.05).

    A spec is a list of numbers and/or segments {linspace|geomspace: [start, stop, num]}
    (optionally `endpoint: false`), as in conf/perturbation/use.yaml.

    Example:
        >>> expand_grid([{"linspace": [0, 1, 4], "endpoint": False}, 1.0, {"geomspace": [1, 100, 3]}])
        [0.0, 0.25, 0.5, 0.75, 1.0, 10.0, 100.0]
    """
    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, (int, float, dict)):
        spec = [spec]
    points: list[float] = []
    for seg in spec:
        if isinstance(seg, (int, float)) and not isinstance(seg, bool):
            points.append(float(seg))
            continue
        kinds = [k for k in ("linspace", "geomspace") if isinstance(seg, dict) and k in seg]
        if len(kinds) != 1 or len(seg[kinds[0]]) != 3:
            raise PerturbationError(
                f"bad grid segment {seg!r}; accepted: a number, or {{linspace: [start, stop, num]}} / "
                "{geomspace: [start, stop, num]} with an optional endpoint: false")
        start, stop, num = seg[kinds[0]]
        fn = np.linspace if kinds[0] == "linspace" else np.geomspace
        points.extend(fn(float(start), float(stop), int(num), endpoint=bool(seg.get("endpoint", True))).tolist())
    return sorted({round(p, 12) + 0.0 for p in points})  # + 0.0 turns -0.0 into 0.0


def _as_list(value) -> list:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def sweep_points(cfg, site: str | None = None, hidden: int | None = None) -> dict[str, list[float]]:
    """Check a `perturbation` config (against a model's site and width, when given) and
    return {kind: magnitudes}: `magnitude` (one point) or `magnitudes` (a list) when set,
    else each kind's grid.

    Example:
        >>> from dmlight.config import compose_config
        >>> cfg = compose_config(["perturbation=use"]).perturbation
        >>> {k: len(v) for k, v in sweep_points(cfg, "pre_activation").items()}
        {'scale': 100, 'clip': 100, 'offset': 125}
    """
    kinds = [str(k) for k in _as_list(cfg.get("kinds"))]
    if not kinds:
        raise PerturbationError("no perturbation kinds to run (perturbation.kinds is empty, as in "
                                "perturbation=none). Pick a grid: perturbation=use (scale, clip, offset) "
                                "or perturbation=learn (clamp_min, clamp_max).")
    for kind in kinds:
        if kind not in KINDS:
            raise PerturbationError(f"unknown perturbation kind {kind!r}; accepted: {', '.join(KINDS)}. "
                                    "Set perturbation.kinds=[...] or pick a grid (perturbation=use, learn).")
        if site is not None and KINDS[kind] != site:
            fit = [k for k, s in KINDS.items() if s == site]
            raise PerturbationError(
                f"perturbation kind {kind!r} acts at the {KINDS[kind]} site, but this model's Perturbation "
                f"layer sits at {site}. Kinds that fit it: {', '.join(fit)}"
                f" (perturbation={'use' if site == 'pre_activation' else 'learn'}); for {kind!r}, train the "
                f"model with arch.site={KINDS[kind]}.")
    sweep_splits(cfg)
    sweep_ranges(cfg)
    check_unit(cfg.get("unit"), hidden)
    one, many = cfg.get("magnitude"), cfg.get("magnitudes")
    if one is not None and many is not None:
        raise PerturbationError(f"both perturbation.magnitude={one} and perturbation.magnitudes={_as_list(many)} "
                                "are set; set only one (magnitude for a single point, magnitudes for a list).")
    override = [one] if one is not None else _as_list(many) if many is not None else None
    points = {}
    for kind in kinds:
        spec = override if override is not None else (cfg.get("grids") or {}).get(kind)
        if spec is None:
            raise PerturbationError(f"no grid for perturbation kind {kind!r}: add perturbation.grids.{kind}, "
                                    "or give perturbation.magnitudes=[...] or perturbation.magnitude=<p>.")
        try:
            points[kind] = expand_grid(spec)
        except (TypeError, ValueError) as e:
            if isinstance(e, PerturbationError):
                raise
            raise PerturbationError(f"bad magnitudes for {kind!r} ({spec!r}): {e}. Give fractions, "
                                    "e.g. perturbation.magnitudes=[0.05,0.1].") from None
        if not points[kind]:
            raise PerturbationError(f"the grid for {kind!r} is empty; give at least one magnitude.")
        if kind == "unit_scale":
            check_unit_scale(points[kind][0])  # the grid is sorted: its first point is the smallest
    return points


def check_unit(unit, n_units: int | None = None, layer: str | None = None) -> None:
    """`perturbation.unit` checked: null (the whole layer) or a unit index below `n_units` (when known).

    Example:
        >>> check_unit(3, 2, "hidden")
        Traceback (most recent call last):
        ...
        dmlight.errors.PerturbationError: perturbation.unit=3 is not a unit of 'hidden'; accepted: 0..1, or null for the whole layer.
    """
    if unit is None:
        return
    if isinstance(unit, bool) or not isinstance(unit, int) or unit < 0 or (n_units is not None and unit >= n_units):
        top = f"0..{n_units - 1}" if n_units else "a unit index"
        raise PerturbationError(f"perturbation.unit={unit!r} is not a unit of {'this layer' if layer is None else repr(layer)}"
                                f"; accepted: {top}, or null for the whole layer.")


def sweep_ranges(cfg) -> str:
    """Where a `perturbation` config takes each unit's range (RANGES; default the papers' activation output).

    Example:
        >>> sweep_ranges({}), sweep_ranges({"ranges": "site_output"})
        ('activation_output', 'site_output')
    """
    where = str(cfg.get("ranges") or RANGES[0])
    if where not in RANGES:
        raise PerturbationError(f"perturbation.ranges={where!r}; accepted: {', '.join(RANGES)} (the papers' choice "
                                "first; site_output: the values the perturbation acts on, comparable across "
                                "activations).")
    return where


def unit_seed(cfg) -> int:
    """The seed of unit_scale's u_i draw in a `perturbation` config (`unit_seed`, default UNIT_SEED)."""
    seed = cfg.get("unit_seed")
    return UNIT_SEED if seed is None else int(seed)


def sweep_splits(cfg) -> list[str]:
    """The splits a `perturbation` config measures, checked.

    Example:
        >>> sweep_splits({"splits": ["train", "test"]})
        ['train', 'test']
    """
    splits = [str(s) for s in _as_list(cfg.get("splits", ["train"]))]
    for split in splits:
        if split not in SPLITS:
            raise PerturbationError(f"unknown split {split!r} in perturbation.splits; accepted: "
                                    f"{', '.join(SPLITS)}, e.g. perturbation.splits=[train,test].")
    return splits


# ---------------------------------------------------------------- the math

@dataclass
class UnitRanges:
    """Per-unit min and max of the hidden layer's activation output on the training set."""

    min: torch.Tensor
    max: torch.Tensor

    @property
    def range(self) -> torch.Tensor:
        return self.max - self.min

    def rows(self) -> list[dict]:
        return [{"unit": k, "min": lo, "max": hi, "range": hi - lo}
                for k, (lo, hi) in enumerate(zip(self.min.tolist(), self.max.tolist()))]


def check_unit_scale(p: float) -> None:
    """unit_scale's magnitude must be > 0: each unit's factor is p ** u_i."""
    if p <= 0:
        raise PerturbationError(f"unit_scale magnitude {p!r}: each unit's factor is p ** u_i, so every p must be > 0 "
                                "(e.g. a geomspace grid from 0.01).")


def unit_exponents(n: int, seed: int = UNIT_SEED) -> torch.Tensor:
    """unit_scale's u_i: n draws uniform in [0, 1) (float64) from torch's generator seeded with `seed`.

    Example:
        >>> u = unit_exponents(4, seed=7)
        >>> bool((u >= 0).all() and (u < 1).all()), torch.equal(u, unit_exponents(4, seed=7))
        (True, True)
    """
    return torch.rand(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)


def perturbation_values(kind: str, p: float, ranges: UnitRanges, unit: int | None = None,
                        unit_seed: int = UNIT_SEED) -> dict[str, torch.Tensor]:
    """The per-unit (scale, offset, lower, upper) of one point, for dmlight.perturbation.engine.perturb.

    Computed in float64 so identity points are exact (offset 0 gives scale 1, clip 100%
    gives the max), then stored as float32 like the activations.

    Example:
        >>> r = UnitRanges(torch.tensor([0.0, 1.0]), torch.tensor([4.0, 3.0]))
        >>> perturbation_values("offset", 0.25, r)["scale"].tolist()  # (max - p r) / max
        [0.75, 0.8333333134651184]
        >>> perturbation_values("clip", 0.5, r)["upper"].tolist()  # min + p r
        [2.0, 2.0]
    """
    lo, hi = ranges.min.double().cpu(), ranges.max.double().cpu()
    r, n = hi - lo, len(lo)
    v = {"scale": torch.ones(n, dtype=torch.float64), "offset": torch.zeros(n, dtype=torch.float64),
         "lower": torch.full((n,), -math.inf, dtype=torch.float64),
         "upper": torch.full((n,), math.inf, dtype=torch.float64)}
    if kind == "scale":
        v["scale"].fill_(p)
    elif kind == "unit_scale":
        check_unit_scale(p)
        v["scale"] = float(p) ** unit_exponents(n, unit_seed)
    elif kind == "clip":
        v["upper"] = lo + p * r
    elif kind == "offset":
        active = hi != 0  # a never-active unit keeps s = 1, t = 0 (see the module docstring)
        v["scale"] = torch.where(active, (hi - p * r) / torch.where(active, hi, 1.0), 1.0)
        v["offset"] = torch.where(active, p * r, 0.0)
    elif kind in ("clamp_min", "clamp_max"):
        if unit is None:  # one threshold for the whole layer, from the layer's own min and max
            threshold = torch.full((n,), (lo.min() + p * (hi.max() - lo.min())).item(), dtype=torch.float64)
        else:
            threshold = lo + p * r
        v["lower" if kind == "clamp_min" else "upper"] = threshold
    else:
        raise PerturbationError(f"unknown perturbation kind {kind!r}; accepted: {', '.join(KINDS)}")
    if unit is not None:  # every other unit stays at identity
        identity = {"scale": 1.0, "offset": 0.0, "lower": -math.inf, "upper": math.inf}
        for name, tensor in v.items():
            keep = tensor[unit].item()
            tensor.fill_(identity[name])
            tensor[unit] = keep
    return {name: t.float() for name, t in v.items()}


def stack_values(kind: str, magnitudes, ranges: UnitRanges, unit: int | None = None,
                 unit_seed: int = UNIT_SEED) -> dict[str, torch.Tensor]:
    """perturbation_values of many magnitudes, stacked to (points, units) per name."""
    per = [perturbation_values(kind, float(p), ranges, unit, unit_seed) for p in magnitudes]
    return {name: torch.stack([v[name] for v in per]) for name in per[0]}
