"""Perturb a saved run again: `python -m dmlight.perturb run_dir=<run> perturbation=<grid>`.

Examples:
    python -m dmlight.perturb run_dir=outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0 perturbation=offset
    python -m dmlight.perturb run_dir=<run> perturbation=use_table perturbation.splits=[train,test]
    python -m dmlight.perturb -m run_dir=<run> perturbation=use perturbation.kinds=[offset] \
        perturbation.magnitude=-0.02,0.02
    python -m dmlight.perturb -m run_dir=<LEARN run> perturbation=learn 'perturbation.unit=range(128)'
    python -m dmlight.perturb run_dir=<run of arch.hidden=[128,64]> perturbation.layer=hidden2

Every point appends one row to <run_dir>/perturbation.csv (rows already there are never
rewritten; a reader takes the last row of a repeated point) and unit_ranges.csv is refreshed;
for another layer than `hidden`, perturbation_<layer>.csv and unit_ranges_<layer>.csv.
A bad request ends with a one-paragraph message and exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dmlight.config import CONF_DIR
from dmlight.data.datasets import DataError, Splits
from dmlight.errors import UserError
from dmlight.perturbation.formulas import PerturbationError, sweep_points
from dmlight.perturbation.site import ProbeError, locate
from dmlight.runs.load import RunDirError, load_run
from dmlight.perturbation.driver import run_sweep, sweep_layers
from dmlight.runs.files import append_results, layer_files, write_unit_ranges

EXAMPLE = ("python -m dmlight.perturb run_dir=outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0 "
           "perturbation=use")


def perturb(run_dir: str | Path, cfg, device: str = "auto", log=print) -> list[dict]:
    """Run the sweep `cfg` (a `perturbation` config) on the saved run in `run_dir`; append its rows.

    Example:
        >>> rows = perturb("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0",  # doctest: +SKIP
        ...                compose_config(["perturbation=offset"]).perturbation)
    """
    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir)
    except RunDirError as e:
        raise PerturbationError(str(e)) from None
    layers = ["hidden"]
    try:  # a bad request (a kind, a unit, a layer the network lacks) fails before the data loads
        layers = sweep_layers(cfg.get("layer"), run.model)
        for layer in layers:
            where = locate(run.model, layer, run.model.site)
            sweep_points(cfg, run.model.site, where.n_units)
    except (PerturbationError, ProbeError) as e:
        where = f"perturbation.layer={layer}: " if isinstance(e, ProbeError) else ""
        raise PerturbationError(f"run_dir={run_dir} ({run.model.name}): {where}{e}") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net = run.model.to(device)
    if log:
        log(f"[perturb] {run.model.name} seed {run.cfg.seed}: {run_dir}")
    epoch = int(run.summary.get("epochs", run.cfg.trainer.max_epochs))  # the trained network's epochs
    data, every = Splits(*run.data(device)), []
    for layer in layers:  # one file per layer (dmlight.runs.files.layer_files)
        layer_cfg = OmegaConf.merge(cfg, {"layer": layer}) if OmegaConf.is_config(cfg) else {**cfg, "layer": layer}
        rows, ranges = run_sweep(net, data, layer_cfg, log=log, epoch=epoch, label="" if layer == "hidden" else layer)
        results, ranges_file = layer_files(layer)
        write_unit_ranges(run_dir, ranges, ranges_file)
        append_results(run_dir, rows, results)
        if log:
            log(f"[perturb] appended {len(rows)} rows to {run_dir / results}")
        every += rows
    return every


@hydra.main(config_path=str(CONF_DIR), config_name="perturb", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "run_dir"):
            raise PerturbationError(f"run_dir is not set: say which run to perturb, e.g. {EXAMPLE}")
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg.num_threads))
        perturb(cfg.run_dir, cfg.perturbation, cfg.get("device", "auto"))
    except (UserError, DataError) as e:  # bad input: the message says what to do
        print(f"dmlight.perturb: error: {e}", file=sys.stderr)
        sys.exit(2)


def quote_run_dir(argv: list[str]) -> list[str]:
    """A run directory of a variant (`.../ReLU/optimizer.lr=0.0022,trainer.max_epochs=40/seed0`) holds `=` and `,`,
    which Hydra's override grammar reads as syntax: such an unquoted `run_dir=` value is quoted whole. (To sweep
    several of them with -m, quote each: run_dir="'<a>','<b>'".)

    Example:
        >>> quote_run_dir(["run_dir=out/ReLU/optimizer.lr=0.1,trainer.max_epochs=40/seed0", "run_dir=a,b"])
        ["run_dir='out/ReLU/optimizer.lr=0.1,trainer.max_epochs=40/seed0'", 'run_dir=a,b']
    """
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "run_dir" and "=" in value and not any(q in value for q in "'\""):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def cli() -> None:
    """`dmlight-perturb [overrides]`, the same as `python -m dmlight.perturb`."""
    sys.argv = quote_run_dir(sys.argv)
    main()


if __name__ == "__main__":
    cli()
