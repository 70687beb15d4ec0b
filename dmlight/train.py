"""Train one model of either paper: `python -m dmlight.train [overrides]`, `-m` to sweep.

Example:
    python -m dmlight.train experiment=use_distance_metrics data=mnist5k activation=abs seed=3
    python -m dmlight.train -m experiment=learn_distance_metrics arch=mlp,mlp2,mlp2_neg \
        activation=relu,abs seed='range(5)'
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

# torch and Lightning are imported where a run trains, so that --help, --cfg, shell completion
# and config errors answer at once (tests/package/test_cli.py checks that they import neither).
from dmlight import config as _config  # noqa: F401  (registers the run directory's resolvers)
from dmlight.errors import ConfigError, NonFiniteLoss, UserError
from dmlight.models.grid import hidden_setting
from dmlight.runs import files as runfiles, layout as rundir
from dmlight.runs.files import (last_checkpoint, make_summary, read_json, record_failure, reset_run, summary_path,
                                truncate_metrics, write_summary)
from dmlight.runs.layout import RunDirBusy, RunDirConflict, RunLock, claim_run_dir
from dmlight.targets import check_targets
from dmlight.tracking.loggers import finish_loggers, instantiate_group, make_loggers, offline_hint
from dmlight.training import devices
from dmlight.training.multirun import record_sweep_failure
from dmlight.training.progress import seed_range

if TYPE_CHECKING:  # annotations only: Lightning loads where a run trains
    import pytorch_lightning as pl


class _NoTips(logging.Filter):
    """Lightning's advertising line says nothing about the run; drop it from every job's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")


def build_network(cfg: DictConfig, seed: int | None = None, sizes: tuple[int, int] = (784, 10)):
    """The run's network with exactly the initial weights seed `seed` gives (cfg.seed by default), for
    inputs and classes of `sizes` (in_features, n_classes)."""
    import pytorch_lightning as pl

    from dmlight.models.networks import model_from_config

    pl.seed_everything(cfg.seed if seed is None else seed, verbose=False)
    return model_from_config(cfg, *sizes)


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The solo config of one ensemble member: what `seed=<seed>` alone would run."""
    member = cfg.copy()
    member.seed, member.seeds = int(seed), None
    return member


def make_callbacks(cfg: DictConfig, run_dirs: list[Path], name: str, on_diverged=None) -> list[pl.Callback]:
    """The Lightning callbacks `cfg.callbacks` lists (conf/callbacks/), for these run directories."""
    return instantiate_group(cfg.callbacks, "callbacks", run_dirs=run_dirs, name=name, on_diverged=on_diverged)


def run_summary(cfg: DictConfig, status: str, ensemble_size: int, provenance: dict, **measured) -> dict:
    """summary.json of a run (dmlight.runs.files.SUMMARY_KEYS): what every summary says of its run, whatever
    became of it, and what was `measured` (final_measures' numbers, or where a diverged run's loss broke)."""
    return make_summary(
        status=status, experiment=cfg.experiment_name, model_name=_config.model_name(cfg),
        arch=cfg.arch.name, activation=cfg.activation.name, head_bias=bool(cfg.arch.head_bias),
        hidden=hidden_setting(cfg.arch.hidden), perturbation_site=cfg.arch.site, seed=int(cfg.seed),
        data=cfg.data.name, preprocess=cfg.data.preprocess, epochs=int(cfg.trainer.max_epochs),
        lr=float(cfg.optimizer.lr), variant=str(cfg.get("variant") or ""), ensemble_size=ensemble_size,
        provenance=provenance, **measured)


def diverged_message(name: str, summary: dict, run_dir: Path) -> str:
    return (f"{name} seed {summary['seed']} ({run_dir}): loss became {summary['diverged_loss']} at epoch "
            f"{summary['diverged_epoch']}. Recorded as diverged in summary.json: a rerun skips it, "
            "run.retry_diverged=true retrains it. Lower optimizer.lr, or try data.preprocess=standardize.")


def final_measures(net, data, seconds: float) -> dict:
    """What summary.json says of a finished run, measured on the final network."""
    import torch

    from dmlight.models.networks import unit_counts
    from dmlight.training.module import accuracy

    net.to(data.x_train.device).eval()
    units, logits = {}, {}
    for split in ("train", "test"):  # one forward pass per split gives the units and the logits
        units[split], logits[split] = unit_counts(net, data.split(split)[0], return_output=True)
    y_train, y_test = data.y_train, data.y_test
    return {
        "train_loss": torch.nn.functional.cross_entropy(logits["train"], y_train).item(),
        "train_acc": accuracy(logits["train"], y_train).item(),
        "test_acc": accuracy(logits["test"], y_test).item(),
        "units": {layer: {split: units[split][layer] for split in units} for layer in units["train"]},
        "wall_time_s": round(seconds, 3), "device": str(data.x_train.device),
        "torch_threads": torch.get_num_threads(),
    }


def train(cfg: DictConfig, run_dir: str | Path | None = None,
          callbacks: list[pl.Callback] = ()) -> dict | list[dict]:
    """Train (or resume, or skip if finished) the run `cfg` describes, in `run_dir`
    (default: where dmlight.runs.layout puts it).

    With `cfg.seeds` set, trains those seeds as one stacked ensemble and returns a list of
    summaries; each member's directory follows dmlight.runs.layout.member_dirs (beside an ensemble
    directory of dmlight's own naming, where solo runs live; else inside `run_dir`). A run whose
    loss becomes non-finite is retired alone with a "diverged" summary; NonFiniteLoss is raised
    only when every run diverged. `callbacks` are extra Lightning callbacks added to the Trainer.
    Example:
        >>> summary = train(compose_config(["data=synthetic", "trainer.max_epochs=5"]), "/tmp/r")  # doctest: +SKIP
    """
    _config.settle_hidden(cfg)  # a bad arch.hidden fails here; [128] is saved as 128
    check_targets(cfg)  # a user's data set or network (`_target_`) that cannot be found: before torch loads
    run_dir = rundir.run_dir(cfg) if run_dir is None else Path(run_dir)
    if cfg.get("seeds") is None:
        members = [(cfg, run_dir)]
    else:
        seeds = [int(s) for s in cfg.seeds]
        if len(set(seeds)) != len(seeds) or not seeds:
            raise ConfigError(f"seeds={seeds} must be distinct and non-empty, e.g. seeds='range(20)'")
        dirs = rundir.member_dirs(run_dir, seeds)
        members = [(member_config(cfg, s), dirs[s]) for s in seeds]
    with contextlib.ExitStack() as locks:
        for _, d in members:
            locks.enter_context(RunLock(d))
        try:
            summaries = _train_locked(cfg, members, list(callbacks))
        except (RunDirConflict, RunDirBusy):  # those directories are other runs'
            raise
        except Exception as e:
            if len(members) > 1:  # each member's own directory says why it has no summary
                for _, d in members:
                    if read_json(summary_path(d)) is None:
                        record_failure(d, e)
            raise
    name = _config.model_name(cfg)
    if all(s["status"] == runfiles.DIVERGED for s in summaries):
        raise NonFiniteLoss(" ".join(diverged_message(name, s, d) for s, (_, d) in zip(summaries, members)))
    return summaries[0] if cfg.get("seeds") is None else summaries


def _train_locked(cfg: DictConfig, members: list[tuple[DictConfig, Path]],
                  callbacks: list[pl.Callback]) -> list[dict]:
    name = _config.model_name(cfg)
    done, todo = {}, []
    for member_cfg, d in members:
        claim_run_dir(d, member_cfg)
        summary = read_json(summary_path(d)) or {}
        if summary.get("status") == runfiles.COMPLETE:
            print(f"[{name}] seed {member_cfg.seed} complete, skipping: {d}", flush=True)
            done[d] = summary
        elif summary.get("status") == runfiles.DIVERGED and not cfg.run.get("retry_diverged"):
            print(f"[{name}] seed {member_cfg.seed} diverged at epoch {summary['diverged_epoch']}, skipping "
                  f"(run.retry_diverged=true retrains it): {d}", flush=True)
            done[d] = summary
        else:
            if summary.get("status") == runfiles.DIVERGED:  # retry from scratch: its checkpoints led there
                reset_run(d)
            runfiles.failed_path(d).unlink(missing_ok=True)
            todo.append((member_cfg, d))
    if todo:
        for d, summary in _fit(cfg, todo, name, callbacks).items():
            done[d] = summary
    return [done[d] for _, d in members]


def _resume_point(todo: list[tuple[DictConfig, Path]], name: str) -> Path | None:
    """The checkpoint to resume from (the first member's; MemberCheckpoints joins the others'),
    if every member has one from the same epoch."""
    ckpts = [last_checkpoint(d) for _, d in todo]
    if not any(ckpts):
        for _, d in todo:  # metrics of an attempt that died before its first checkpoint
            runfiles.metrics_path(d).unlink(missing_ok=True)
        return None
    if not all(ckpts):
        missing = [str(d) for (_, d), c in zip(todo, ckpts) if c is None]
        raise RunDirConflict(f"{name}: some members have a checkpoint and some do not ({', '.join(missing)}); "
                             "an ensemble resumes only together. Rerun those seeds solo (seed=<s>) or delete them.")
    import torch

    epochs = {torch.load(c, map_location="cpu", weights_only=False)["epoch"] for c in ckpts}
    if len(epochs) > 1:
        raise RunDirConflict(f"{name}: members were checkpointed at different epochs {sorted(epochs)}; "
                             "rerun them solo (seed=<s>) to resume each on its own.")
    epoch = epochs.pop() + 1
    for (_, d), c in zip(todo, ckpts):
        truncate_metrics(d, epoch)
        print(f"[{name}] resuming {d} from {c} (epoch {epoch})", flush=True)
    return ckpts[0]


def _fit(cfg: DictConfig, todo: list[tuple[DictConfig, Path]], name: str,
         callbacks: list[pl.Callback]) -> dict[Path, dict]:
    import pytorch_lightning as pl
    import torch

    from dmlight.training.checkpoints import MemberCheckpoints
    from dmlight.data.datasets import load_data_cfg
    from dmlight.training.module import DistanceModule, Ensemble
    from dmlight.runs.provenance import provenance

    if cfg.run.get("num_threads"):
        torch.set_num_threads(cfg.run.num_threads)
    data = load_data_cfg(cfg.data)
    nets = [build_network(c, sizes=data.sizes()) for c, _ in todo]
    net = nets[0] if len(nets) == 1 else Ensemble(nets)
    module = DistanceModule(net, data, hydra.utils.instantiate(cfg.optimizer), cfg.data.batch_size,
                            cfg.eval_every, cfg.data.get("shuffle_seed", 0), cfg.run.get("member_group"))
    run_dirs = [d for _, d in todo]
    ckpt_path = _resume_point(todo, name)

    label = name if len(todo) == 1 else f"{name} seeds {seed_range(c.seed for c, _ in todo)}"
    # One set of loggers per member, from its solo config: an ensemble member's W&B run is its solo run's
    # twin (name, group, tags, config, keys, steps); the RunRecorder logs each member to its own.
    loggers = [lg for c, d in todo for lg in make_loggers(c, d, f"{name}-seed{c.seed}", name, hint=False)]
    offline_hint(cfg, run_dirs, label)
    summaries = {}

    def on_diverged(member: int, epoch: int, loss: float) -> None:
        member_cfg, d = todo[member]
        module.retire(member)
        summaries[d] = run_summary(member_cfg, runfiles.DIVERGED, len(todo), prov, diverged_epoch=int(epoch),
                                   diverged_loss=str(loss))
        write_summary(d, summaries[d])
        print(f"[{name}] seed {member_cfg.seed} diverged: loss {loss} at epoch {epoch}; retired, "
              f"{'the others train on' if len(todo) > 1 else 'stopping'}  -> {d}", flush=True)

    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=loggers or False,
                         callbacks=make_callbacks(cfg, run_dirs, label, on_diverged) + callbacks,
                         default_root_dir=str(run_dirs[0]), plugins=[MemberCheckpoints(run_dirs)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    prov = provenance(trainer.strategy.root_device)
    for logger in loggers:
        logger.log_hyperparams({"provenance": prov})
    t0 = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
        fit_time = time.perf_counter() - t0
        for (member_cfg, d), member in zip(todo, module.members()):
            if d in summaries:  # diverged
                continue
            summary = run_summary(member_cfg, runfiles.COMPLETE, len(todo), prov, fit_time_s=round(fit_time, 4),
                                  **final_measures(member, module.data, time.perf_counter() - t0))
            write_summary(d, summary)
            summaries[d] = summary
            print(f"[{name}] seed {member_cfg.seed} done: train acc {100 * summary['train_acc']:.2f}%  "
                  f"test acc {100 * summary['test_acc']:.2f}%  loss {summary['train_loss']:.4g}  -> {d}",
                  flush=True)
    finally:
        finish_loggers(loggers)
    return summaries


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


# An absolute path: Hydra then reads conf/ as files whether run as a module or a command (its
# package provider cannot list config groups, which tab completion needs).
@hydra.main(config_path=str(_config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    _config.pin_variant(cfg)  # named by this job's overrides, which member configs no longer carry
    try:
        _config.model_name(cfg)  # an unknown arch or activation, a bad arch.hidden: a short error before torch loads
        with job_device(cfg, hc):
            result = train(cfg, run_dir)
        return result["test_acc"] if isinstance(result, dict) else [r["test_acc"] for r in result]
    except Exception as e:  # noqa: BLE001  (recorded, then reported below)
        if not isinstance(e, (RunDirConflict, RunDirBusy, NonFiniteLoss)):  # another run's dir; a result
            record_failure(run_dir, e)
        if hc.mode == RunMode.MULTIRUN:
            # One failed point must not stop the sweep; SweepReport lists failures at the end.
            record_sweep_failure(Path(hc.sweep.dir), run_dir, e)
            if not isinstance(e, UserError):  # a bug, not bad input: keep its traceback
                traceback.print_exc()
            print(f"FAILED {run_dir}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def expand_seed_ranges(argv: list[str]) -> list[str]:
    """`seeds=range(20)` means the list 0..19 here, in single runs and sweeps alike.

    (Hydra would read range() as a sweep over single seeds; an ensemble wants the list.)
    Example:
        >>> expand_seed_ranges(["seeds=range(2,5)", "seed=range(3)"])
        ['seeds=[2,3,4]', 'seed=range(3)']
    """
    out = []
    for arg in argv:
        m = re.fullmatch(r"(\+?seeds)=range\((\d+)(?:,\s*(\d+))?\)", arg)
        if m:
            lo, hi = (0, int(m[2])) if m[3] is None else (int(m[2]), int(m[3]))
            arg = f"{m[1]}=[{','.join(map(str, range(lo, hi)))}]"
        out.append(arg)
    return out


def cli() -> None:
    """`dmlight-train [overrides]`, the same as `python -m dmlight.train`."""
    sys.argv = expand_seed_ranges(sys.argv)
    main()


if __name__ == "__main__":
    cli()
