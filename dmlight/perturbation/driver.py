"""The one sweep driver: dmlight's training (PerturbationSweep), `dmlight.perturb` (run_sweep) and any
Lightning model's DistanceProbe all set up their sweeps with `site_sweeps` and turn them into rows with
`sweep_rows` (the engines themselves: dmlight.perturbation.engine; the formulas: .formulas; the files the rows
go to: dmlight.runs.files).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from dmlight.errors import PerturbationError
from dmlight.models.networks import layer_names
from dmlight.perturbation.engine import DEFAULT_CHUNK_ROWS, HookSweep, SplitSweep
from dmlight.perturbation.formulas import (UNIT_SEED, UnitRanges, check_unit, stack_values, sweep_points, sweep_ranges,
                                          sweep_splits, unit_seed)
from dmlight.perturbation.site import ProbeSite, locate

FAST_PATH_BYTES = 1 << 30  # SplitSweep keeps a split's layer output; above this the hooks recompute it


def sweep_layers(spec, net: nn.Module | None = None) -> list[str]:
    """The layers a `perturbation.layer` value names: one name, a list of names, or `all` (every hidden layer of
    a dmlight Network: hidden, hidden2, ...; resolved when `net` is given). Default: `hidden`.

    Example:
        >>> from dmlight.models.networks import build_model
        >>> sweep_layers(None), sweep_layers(["hidden2", "hidden"]), sweep_layers("all", build_model("mlp", "abs", hidden=[64, 32]))
        (['hidden'], ['hidden2', 'hidden'], ['hidden', 'hidden2'])
    """
    if spec is None or spec == "":
        return ["hidden"]
    if isinstance(spec, str) and spec != "all":
        return [spec]
    if spec == "all":
        if net is None:
            return ["all"]
        widths = getattr(net, "widths", None)
        if widths is None:
            raise PerturbationError(f"perturbation.layer=all: {type(net).__name__} is not a dmlight Network, whose "
                                    "hidden layers are known; name the layers, e.g. perturbation.layer=[fc1,fc2].")
        return [name for name, _ in layer_names(len(widths))]
    layers = [str(x) for x in spec]
    if not layers or len(set(layers)) != len(layers):
        raise PerturbationError(f"perturbation.layer={layers}; accepted: a layer name, a list of distinct names, "
                                "or all (every hidden layer), e.g. perturbation.layer=[hidden,hidden2].")
    return layers


def sweep_rows(sweeps: dict, points: dict[str, list[float]], ranges: UnitRanges, unit: int | None = None,
               epoch: int | None = None, log=print, label: str = "", unit_seed: int = UNIT_SEED,
               range_of: str = "activation_output") -> list[dict]:
    """The rows of perturbation.csv for `points` ({kind: magnitudes}) on each split's sweep
    ({split: SplitSweep or HookSweep}), from the training set's `ranges` (taken at `range_of`): a
    baseline row per split, then one per point with its accuracy and size of change."""
    rows = []
    where = "all" if unit is None else unit
    for split, sweep in sweeps.items():
        n = sweep.n
        rows.append({"epoch": epoch, "kind": "baseline", "magnitude": None, "split": split, "unit": "all",
                     "accuracy": sweep.baseline / n, "change": 0.0, "range_of": range_of})
        for kind, magnitudes in points.items():
            t0 = time.perf_counter()
            counts, changes = sweep.measure(**stack_values(kind, magnitudes, ranges, unit, unit_seed))
            accs = [c / n for c in counts]
            rows += [{"epoch": epoch, "kind": kind, "magnitude": p, "split": split, "unit": where,
                      "accuracy": a, "change": c, "range_of": range_of} for p, a, c in zip(magnitudes, accs, changes)]
            if log:
                at = "" if unit is None else f" unit {unit}"
                how_many = f"{len(magnitudes)} point{'s' if len(magnitudes) > 1 else ''}"
                log(f"[perturbation{' ' + label if label else ''}] {kind}{at} on {split} ({n} rows"
                    f"{'' if epoch is None else f', epoch {epoch}'}): {how_many} in {time.perf_counter() - t0:.2f}s, "
                    f"accuracy {100 * min(accs):.2f}%..{100 * max(accs):.2f}% "
                    f"(unperturbed {100 * sweep.baseline / n:.2f}%)")
    return rows


def site_sweeps(model: nn.Module, where: ProbeSite, batches_of, splits, unit: int | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, range_of: str = "activation_output") -> tuple[dict, UnitRanges]:
    """The one sweep driver's set-up, for dmlight's training, dmlight.perturb and DistanceProbe alike: a
    sweep per split at `where` (dmlight.perturbation.site.locate) and the training set's unit ranges,
    after checking `unit` against them. `batches_of(split)` gives a split's (x, y) batches on the
    model's device. A Sequential split at the target runs SplitSweep (trunk once) unless the trunk's
    output would pass FAST_PATH_BYTES; any other model runs HookSweep.

    Example:
        >>> from dmlight.models.networks import build_model
        >>> from dmlight.perturbation.site import locate
        >>> net = build_model("mlp", "abs").eval()
        >>> data = {"train": [(torch.rand(9, 784), torch.zeros(9, dtype=torch.long))]}
        >>> sweeps, ranges = site_sweeps(net, locate(net, "hidden"), data.get, ["train"])
        >>> type(sweeps["train"]).__name__, len(ranges.min)
        ('SplitSweep', 128)
    """
    train = batches_of("train")
    parts = where.cut(model)
    if parts is not None and train:
        with torch.inference_mode():
            out = parts[0](train[0][0][:1])
        if out.element_size() * out.numel() * sum(len(y) for _, y in train) > FAST_PATH_BYTES:
            parts = None

    def one(batches):
        if parts is not None:
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            return SplitSweep(parts[0], parts[1], x, y, parts[2], chunk_rows, unit_dim=where.unit_dim,
                              layer=where.layer)
        return HookSweep(model, model.get_submodule(where.target), batches, where.ranges_module(model),
                         unit_dim=where.unit_dim, layer=where.layer)

    first = one(train)
    ranges = first.unit_ranges(range_of)  # always the training set's, whichever splits are measured
    check_unit(unit, len(ranges.min), where.layer)
    return {split: first if split == "train" else one(batches_of(split)) for split in splits}, ranges


def run_sweep(net: nn.Module, data, cfg, log=print, label: str = "", epoch: int | None = None,
              points: dict | None = None) -> tuple[list[dict], UnitRanges]:
    """Run the sweep `cfg` (a `perturbation` config) on a dmlight Network and `data` (a
    dmlight.data.datasets.Splits), at the network's own site: the output of `cfg.layer` (default
    `hidden`), or of the activation after it at the post_activation site.

    Returns the rows for perturbation.csv (one baseline row per split, then one per point)
    and the training-set unit ranges the points were computed from. `points` replaces the
    config's grid. Leaves the network in eval mode.

    Example:
        >>> run = load_run("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")   # doctest: +SKIP
        >>> cfg = compose_config(["perturbation=offset"]).perturbation                        # doctest: +SKIP
        >>> rows, ranges = run_sweep(run.model, load_data("mnist5k"), cfg)                     # doctest: +SKIP
    """
    points = points or sweep_points(cfg, net.site, None)
    net.eval()
    where = locate(net, cfg.get("layer") or "hidden", net.site)
    range_of = sweep_ranges(cfg)
    sweeps, ranges = site_sweeps(net, where, lambda split: [data.split(split)], sweep_splits(cfg), cfg.get("unit"),
                                 cfg.get("chunk_rows") or DEFAULT_CHUNK_ROWS, range_of)
    return sweep_rows(sweeps, points, ranges, cfg.get("unit"), epoch, log, label, unit_seed(cfg), range_of), ranges
