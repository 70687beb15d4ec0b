"""Experiment loggers: `logger=wandb`, `logger=csv` or `logger=none`.

The run's own files (metrics.csv, summary.json, ...) are written whatever the logger; W&B
mirrors them, it is never the only copy.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf


def wandb_mode(requested: str | None = None) -> str:
    """The W&B mode: `requested` or WANDB_MODE if set, 'online' with an account (WANDB_API_KEY,
    or a ~/.netrc entry for the W&B host), else 'offline' (`wandb sync` can upload later).

    Example:
        >>> wandb_mode("disabled")
        'disabled'
    """
    mode = requested or os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        has_entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        has_entry = False
    return "online" if has_entry else "offline"


def make_logger(cfg: DictConfig, run_dir: Path, name: str):
    """The Lightning logger `cfg.logger` asks for, or None."""
    kind = cfg.logger.name
    if kind == "none":
        return None
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="", version="csv_logs")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        mode = wandb_mode(cfg.logger.get("mode"))
        if mode == "offline":
            print(f"[{name}] W&B offline (no account or network): sync later with "
                  f"`wandb sync {run_dir}/wandb/offline-run-*`", flush=True)
        tags = [f"arch={cfg.arch.name}", f"activation={cfg.activation.name}", f"seed={cfg.seed}",
                f"data={cfg.data.name}", f"head_bias={cfg.arch.head_bias}"]
        return WandbLogger(project=cfg.logger.project, entity=cfg.logger.get("entity"),
                           group=cfg.experiment_name, name=f"{name}-seed{cfg.seed}", tags=tags,
                           save_dir=str(run_dir), mode=mode, job_type="train",
                           config=OmegaConf.to_container(cfg, resolve=True))
    raise ValueError(f"unknown logger {kind!r}; accepted: wandb, csv, none. Set logger=<one of them>.")


def finish_logger(logger) -> None:
    """Close the W&B run so the next job of a multirun starts a fresh one."""
    if logger is not None and type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()
