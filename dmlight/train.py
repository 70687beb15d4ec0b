"""Train one model of either paper: `python -m dmlight.train [overrides]`, `-m` to sweep.

Example:
    python -m dmlight.train experiment=use_distance_metrics data=mnist5k activation=abs seed=3
    python -m dmlight.train -m experiment=learn_distance_metrics arch=mlp,mlp2,mlp2_neg \
        activation=relu,abs seed='range(5)'
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dmlight import config as _config  # noqa: F401  (registers the ${paper_name:...} resolver)
from dmlight import devices
from dmlight.data import load_data_cfg
from dmlight.errors import UserError
from dmlight.loggers import finish_logger, make_logger
from dmlight.models import build_model, unit_counts
from dmlight.module import DistanceModule
from dmlight.sweep import record_sweep_failure
from dmlight.runs import (RunDirBusy, RunDirConflict, RunLock, RunRecorder, claim_run_dir, is_complete, last_checkpoint,
                          read_json, record_failure, summary_path, truncate_metrics, write_json_atomic)


class _NoTips(logging.Filter):
    """Lightning's advertising line says nothing about the run; drop it from every job's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")


def build_network(cfg: DictConfig, seed: int | None = None):
    """The run's network with exactly the initial weights seed `seed` gives (cfg.seed by default)."""
    pl.seed_everything(cfg.seed if seed is None else seed, verbose=False)
    return build_model(cfg.arch.name, cfg.activation.name, cfg.arch.head_bias, cfg.arch.hidden,
                       site=cfg.arch.site)


def make_callbacks(cfg: DictConfig, run_dir: Path, name: str) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [
        RunRecorder(run_dir, name, cfg.run.checkpoint_every, cfg.run.progress_every, cfg.run.log_every)]
    if cfg.perturbation.get("kinds"):
        from dmlight.perturbation import PerturbationSweep

        callbacks.append(PerturbationSweep(run_dir, cfg.perturbation))
    return callbacks


def final_summary(cfg: DictConfig, module: DistanceModule, name: str, seconds: float) -> dict:
    net, data = module.net, module.data
    net.to(data.x_train.device).eval()
    train_loss, train_acc = module.evaluate("train")
    test_acc = module.evaluate("test")[1]
    return {
        "status": "complete", "experiment": cfg.experiment_name, "model_name": name,
        "arch": cfg.arch.name, "activation": cfg.activation.name, "head_bias": bool(cfg.arch.head_bias),
        "hidden": int(cfg.arch.hidden), "perturbation_site": cfg.arch.site, "seed": int(cfg.seed),
        "data": cfg.data.name, "preprocess": cfg.data.preprocess, "epochs": int(cfg.trainer.max_epochs),
        "lr": float(cfg.optimizer.lr), "train_loss": train_loss.item(), "train_acc": train_acc.item(),
        "test_acc": test_acc.item(),
        "units": {layer: {split: unit_counts(net, data.split(split)[0])[layer] for split in ("train", "test")}
                  for layer in net.activation_layers()},
        "wall_time_s": round(seconds, 3), "device": str(data.x_train.device),
        "torch_threads": torch.get_num_threads(),
    }


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train (or resume, or skip if complete) the run `cfg` describes, in `run_dir`.

    Returns the run's summary. Example:
        >>> summary = train(compose_config(["data=synthetic", "trainer.max_epochs=5"]), "/tmp/r")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    with RunLock(run_dir):
        return _train_locked(cfg, run_dir)


def _train_locked(cfg: DictConfig, run_dir: Path) -> dict:
    name = _config.model_name(cfg)
    claim_run_dir(run_dir, cfg)
    if is_complete(run_dir):
        print(f"[{name}] complete, skipping: {run_dir}", flush=True)
        return read_json(summary_path(run_dir))
    (run_dir / "failed.json").unlink(missing_ok=True)
    if cfg.run.get("num_threads"):
        torch.set_num_threads(cfg.run.num_threads)

    data = load_data_cfg(cfg.data)
    net = build_network(cfg)
    module = DistanceModule(net, data, hydra.utils.instantiate(cfg.optimizer), cfg.data.batch_size,
                            cfg.eval_every, cfg.seed)
    ckpt = last_checkpoint(run_dir)
    if ckpt is not None:
        epochs_done = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] + 1
        truncate_metrics(run_dir, epochs_done)
        print(f"[{name}] resuming from {ckpt} (epoch {epochs_done})", flush=True)
    elif (run_dir / "metrics.csv").exists():
        (run_dir / "metrics.csv").unlink()  # left by a run that crashed before its first checkpoint

    logger = make_logger(cfg, run_dir, name)
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=logger or False,
                         callbacks=make_callbacks(cfg, run_dir, name), default_root_dir=str(run_dir),
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
        fit_time = time.perf_counter() - t0
        summary = final_summary(cfg, module, name, time.perf_counter() - t0)
        summary["fit_time_s"] = round(fit_time, 4)
        write_json_atomic(summary_path(run_dir), summary)
    finally:
        finish_logger(logger)
    print(f"[{name}] done: train acc {100 * summary['train_acc']:.2f}%  test acc "
          f"{100 * summary['test_acc']:.2f}%  loss {summary['train_loss']:.4g}  -> {run_dir}", flush=True)
    return summary


@contextlib.contextmanager
def job_device(cfg: DictConfig, hc):
    """Pin a parallel job (hydra/launcher=gpus) to a free GPU, or share out the CPU cores."""
    parallel = hc.mode == RunMode.MULTIRUN and "joblib" in str(hc.launcher.get("_target_", "")).lower()
    if not parallel:
        yield
        return
    n_gpus = devices.visible_gpus()
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    if devices.wants_pinning(trainer, n_gpus, parallel):
        with devices.GpuSlot(n_gpus, cfg.run.gpu_slot_dir) as gpu:
            cfg.trainer.merge_with(devices.pin_trainer(trainer, gpu))
            print(f"job {hc.job.num} pinned to GPU {gpu}", flush=True)
            yield
    else:
        if not cfg.run.get("num_threads") and n_gpus == 0:
            cfg.run.num_threads = devices.cpu_threads_per_job(hc.launcher.n_jobs)
        yield


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        with job_device(cfg, hc):
            return train(cfg, run_dir)["test_acc"]
    except Exception as e:  # noqa: BLE001  (recorded, then reported below)
        if not isinstance(e, (RunDirConflict, RunDirBusy)):  # that directory is another run's
            record_failure(run_dir, e)
        if hc.mode == RunMode.MULTIRUN:
            # One failed point must not stop the sweep; SweepReport lists failures at the end.
            record_sweep_failure(Path(hc.sweep.dir), run_dir, e)
            print(f"FAILED {run_dir}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
