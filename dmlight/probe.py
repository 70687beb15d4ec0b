"""The perturbation probe: a Lightning callback that runs the configured sweep when training ends."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from dmlight.loggers import member_loggers
from dmlight.perturbation import sweep_points
from dmlight.sweep_engine import append_results, run_sweep, write_unit_ranges
from dmlight.wandb_log import log_sweep


class PerturbationSweep(pl.Callback):
    """Runs the configured perturbation sweep when training ends, on every member network
    (one for a solo run, one per seed for an ensemble), writing perturbation.csv and
    unit_ranges.csv into each member's run directory and, with W&B on, the sweep into the
    member's own W&B run (dmlight.wandb_log.log_sweep). A config that cannot run fails when
    training starts, not after it; `perturbation=none` (no kinds) sweeps nothing.
    """

    def __init__(self, run_dirs: str | Path | list, cfg):
        self.run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
        self.cfg = cfg
        if cfg.get("kinds"):  # a bad grid fails before training
            sweep_points(cfg)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.cfg.get("kinds"):
            sweep_points(self.cfg, pl_module.net.site, pl_module.net.hidden_units)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.cfg.get("kinds"):
            return
        data = pl_module.data
        members = pl_module.members() if hasattr(pl_module, "members") else [pl_module.net]
        own, _ = member_loggers(trainer.loggers, self.run_dirs)  # each member's own W&B run
        for net, run_dir, loggers in zip(members, self.run_dirs, own):
            net.to(data.x_train.device)  # Lightning's teardown moved the module to the CPU
            try:
                rows, ranges = run_sweep(net, data, self.cfg, label=run_dir.name if len(members) > 1 else "")
            finally:
                net.perturb.reset()
            write_unit_ranges(run_dir, ranges)
            append_results(run_dir, rows)
            log_sweep(loggers, rows)
