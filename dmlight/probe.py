"""The perturbation probe: a Lightning callback that runs the configured sweep when training ends."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from dmlight.perturbation import sweep_points
from dmlight.sweep_engine import COLUMNS, append_results, run_sweep, write_unit_ranges


class PerturbationSweep(pl.Callback):
    """Runs the configured perturbation sweep when training ends, on every member network
    (one for a solo run, one per seed for an ensemble), writing perturbation.csv and
    unit_ranges.csv into each member's run directory and, with W&B on, a table and a line
    plot per kind. A config that cannot run fails when training starts, not after it.
    """

    def __init__(self, run_dirs: str | Path | list, cfg):
        self.run_dirs = [Path(d) for d in (run_dirs if isinstance(run_dirs, (list, tuple)) else [run_dirs])]
        self.cfg = cfg
        sweep_points(cfg)

    def on_fit_start(self, trainer, pl_module) -> None:
        sweep_points(self.cfg, pl_module.net.site, pl_module.net.hidden_units)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        data = pl_module.data
        members = pl_module.members() if hasattr(pl_module, "members") else [pl_module.net]
        wandb_run = next((lg.experiment for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"), None)
        for net, run_dir in zip(members, self.run_dirs):
            net.to(data.x_train.device)  # Lightning's teardown moved the module to the CPU
            try:
                rows, ranges = run_sweep(net, data, self.cfg, label=run_dir.name if len(members) > 1 else "")
            finally:
                net.perturb.reset()
            write_unit_ranges(run_dir, ranges)
            append_results(run_dir, rows)
            if wandb_run is not None:
                log_to_wandb(wandb_run, rows, prefix="perturbation" if len(members) == 1
                             else f"perturbation/{run_dir.name}")


def log_to_wandb(run, rows: list[dict], prefix: str = "perturbation") -> None:
    """Log one table and one line plot (a line per split) per kind, and the baselines, to a W&B run."""
    import wandb

    payload = {f"{prefix}/baseline_{r['split']}": r["accuracy"] for r in rows if r["kind"] == "baseline"}
    for kind in dict.fromkeys(r["kind"] for r in rows if r["kind"] != "baseline"):
        kind_rows = [r for r in rows if r["kind"] == kind]
        table = wandb.Table(columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in kind_rows])
        splits = list(dict.fromkeys(r["split"] for r in kind_rows))
        xs = [r["magnitude"] for r in kind_rows if r["split"] == splits[0]]
        ys = [[r["accuracy"] for r in kind_rows if r["split"] == s] for s in splits]
        # Not "<kind>_table": W&B stores a plot's own data under "<plot key>_table".
        payload[f"{prefix}/{kind}_rows"] = table
        payload[f"{prefix}/{kind}_curve"] = wandb.plot.line_series(
            xs=xs, ys=ys, keys=splits, title=f"accuracy under {kind} perturbation", xname="magnitude")
    run.log(payload)
