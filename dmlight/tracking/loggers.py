"""Experiment loggers: `logger=wandb`, `logger=csv` or `logger=none`.

The run's own files (metrics.csv, summary.json, ...) are written whatever the logger; W&B
mirrors them, it is never the only copy.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dmlight.errors import ConfigError

def wandb_mode(requested: str | None = None) -> str:
    """The W&B mode: `requested` or WANDB_MODE if set, 'online' when W&B finds credentials (`wandb_credentials`),
    else 'offline' (`wandb sync` can upload later).

    Example:
        >>> wandb_mode("disabled")
        'disabled'
    """
    mode = requested or os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_MODE") == "":  # set but empty means unset here; W&B's own settings refuse ""
        del os.environ["WANDB_MODE"]
    return "online" if wandb_credentials() else "offline"


def wandb_credentials() -> bool:
    """Whether W&B itself finds credentials for its server, the way `wandb.init` will look: WANDB_API_KEY, an
    identity-token file (WANDB_IDENTITY_TOKEN_FILE), a netrc entry for the host W&B is set to (WANDB_BASE_URL or
    `wandb login --host`'s settings file), or an API key in its settings. No prompt, no network, nothing written.

    W&B's credential lookup (`wandb.sdk.lib.wbauth`) is not among its documented names, so tests/tracking/test_wandb.py
    calls it directly: an upgrade that moves it fails there. Credentials in a form W&B refuses count as found,
    so that W&B's own error tells the user what is wrong with them.
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    try:
        found = wbauth.authenticate_session(host=host, source="dmlight", prompt=False, update_session=False)
    except AuthenticationError:
        return True
    return found is not None


def instantiate_group(specs, what: str, **runtime) -> list:
    """Build every `_target_` entry of a config group (`logger`, `callbacks`) with
    hydra.utils.instantiate, filling the keys it marks ??? from `runtime` (run directories, names).

    Example:
        >>> instantiate_group(cfg.logger, "logger", save_dir="/tmp/run", name="ReLU-seed0")  # doctest: +SKIP
        [<pytorch_lightning.loggers.csv_logs.CSVLogger object at ...>]
    """
    from hydra.utils import instantiate

    built = []
    for key, spec in (specs or {}).items():
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            continue
        missing = [k for k in spec if OmegaConf.is_missing(spec, k)]
        unknown = [k for k in missing if k not in runtime]
        if unknown:
            raise ConfigError(f"{what}.{key}: {', '.join(unknown)} must be set (???); dmlight.train fills in only "
                              f"{', '.join(sorted(runtime))}. Set them, e.g. {what}.{key}.{unknown[0]}=...")
        built.append(instantiate(spec, **{k: runtime[k] for k in missing}))
    return built


def make_loggers(cfg: DictConfig, run_dir: Path, name: str, model_name: str, hint: bool = True) -> list:
    """The Lightning loggers `cfg.logger` lists (conf/logger/), for the run in `run_dir` (`name`: the run's name,
    e.g. 'ReLU-seed3'), with the run's config and its paper model name (`model_name`, what the dashboard groups
    by) logged as hyperparameters. `hint` prints how to sync an offline W&B run later."""
    loggers = instantiate_group(cfg.get("logger"), "logger", save_dir=str(run_dir), name=name)
    for logger in loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "model_name": model_name})
    if hint:
        offline_hint(cfg, [run_dir], name)
    return loggers


def offline_hint(cfg: DictConfig, run_dirs: list[Path], name: str) -> None:
    """Say how to sync the W&B runs of `run_dirs` when they are logged offline (once for an ensemble)."""
    for key, spec in (cfg.get("logger") or {}).items():
        if isinstance(spec, DictConfig) and spec.get("mode") == "offline":
            where = (f"`wandb sync {run_dirs[0]}/wandb/offline-run-*`" if len(run_dirs) == 1 else
                     f"`make wandb-sync RUNS={os.path.commonpath([str(d) for d in run_dirs])}`")
            print(f"[{name}] {key} offline (no account or network): sync later with {where}", flush=True)


def member_loggers(loggers, run_dirs) -> tuple[list[list], list]:
    """Each run's own loggers, and those no run owns: a logger belongs to the run whose directory it writes
    into (its `save_dir`, which dmlight.train fills in per run); a solo run owns every logger.

    Example:
        >>> own, shared = member_loggers(trainer.loggers, ["runs/seed0", "runs/seed1"])  # doctest: +SKIP
    """
    loggers = list(loggers)
    if len(run_dirs) == 1:
        return [loggers], []
    dirs = [Path(d).resolve() for d in run_dirs]
    own, shared = [[] for _ in dirs], []
    for logger in loggers:
        save_dir = getattr(logger, "save_dir", None)
        where = Path(save_dir).resolve() if save_dir else None
        (own[dirs.index(where)] if where in dirs else shared).append(logger)
    return own, shared


def finish_loggers(loggers) -> None:
    """Close each logger's run (a W&B run's `finish`), so the next job of a multirun starts a fresh one."""
    for logger in loggers:
        finish = getattr(logger.experiment, "finish", None)
        if callable(finish):
            finish()
