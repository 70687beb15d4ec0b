"""Run directories: where a run lives, what it holds, and how a rerun picks it up.

A run directory holds
    config.yaml          the resolved config (written first)
    metrics.csv          epoch, train_loss, train_acc, test_acc (appended as training goes)
    checkpoints/last.ckpt  the latest checkpoint (every `run.checkpoint_every` epochs, and the final one)
    perturbation.csv     the perturbation sweep, when one ran
    summary.json         written last and atomically, only when the run completed
    failed.json          why the last attempt failed, when it did (removed on success)
"""
from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import time
from pathlib import Path

import torch
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from dmlight.errors import UserError

METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc")
# Config keys that decide a run's numbers; two configs that agree on these are the same run.
IDENTITY_KEYS = ("experiment_name", "seed", "data.name", "data.preprocess", "data.batch_size",
                 "data.shuffle_seed", "data.n_train", "data.n_test", "arch", "activation", "optimizer",
                 "trainer.max_epochs")


class RunDirConflict(UserError, RuntimeError):
    """The run directory holds a run made with another config."""


class RunDirBusy(UserError, RuntimeError):
    """Another live process holds the run directory's lock."""


class NonFiniteLoss(UserError, RuntimeError):
    """The loss became NaN or inf."""


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader sees the old file or the whole new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def identity(cfg: DictConfig) -> dict:
    """The part of a config that decides the numbers (see IDENTITY_KEYS)."""
    out = {}
    for key in IDENTITY_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if out["data.batch_size"] is None:  # full batch: no order to shuffle
        out["data.shuffle_seed"] = None
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def claim_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Make sure `run_dir` is this config's: new, or holding the same run. Writes config.yaml.

    A directory holding another config's run raises RunDirConflict naming the keys that differ.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    if saved.exists():
        old = _flatten(identity(OmegaConf.load(saved)))
        new = _flatten(identity(cfg))
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:5])
            raise RunDirConflict(
                f"{run_dir} holds a run with another config ({shown}). Refusing to mix results: "
                "choose another directory (hydra.run.dir=... or experiment_name=...) or delete that one.")
    OmegaConf.save(cfg, saved, resolve=True)


def record_failure(run_dir: Path, error: BaseException) -> None:
    """failed.json: why this attempt failed (a rerun resumes; success removes the file)."""
    if Path(run_dir).is_dir():
        write_json_atomic(Path(run_dir) / "failed.json", {
            "error": type(error).__name__, "message": str(error), "time": time.time()})


class RunLock:
    """An exclusive lock on a run directory for as long as a job writes it.

    flock is released by the kernel when the holder dies, so a killed job never leaves a
    stale lock behind. Example:
        >>> with RunLock(Path("/tmp/some_run")):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirBusy(f"{self.path.parent} is being written by {holder}. Two jobs must not "
                             "write one run: wait for it, or kill it and rerun to resume.") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / "summary.json"


def is_complete(run_dir: Path) -> bool:
    s = read_json(summary_path(run_dir))
    return bool(s) and s.get("status") == "complete"


def reset_run(run_dir: Path) -> None:
    """Remove what training wrote (summary, metrics, checkpoints), keeping config.yaml: a retry starts afresh."""
    run_dir = Path(run_dir)
    for name in ("summary.json", "metrics.csv", "perturbation.csv", "unit_ranges.csv", "failed.json"):
        (run_dir / name).unlink(missing_ok=True)
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()


def last_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / "checkpoints" / "last.ckpt"
    return p if p.exists() else None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Keep metrics.csv rows up to `last_epoch` (the checkpoint a resumed run starts from)."""
    rows = [r for r in read_metrics(run_dir) if int(r["epoch"]) <= last_epoch]
    path = Path(run_dir) / "metrics.csv"
    tmp = path.with_name("metrics.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, METRICS_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


class RunRecorder(pl.Callback):
    """Writes metrics.csv, checkpoints and progress lines; retires a member whose loss turns NaN/inf.

    One run directory per member (a solo run is an ensemble of one). Work is batched every
    `log_every` / `checkpoint_every` epochs (metrics are kept on the device until then), so a
    crash loses at most `checkpoint_every` epochs and the training loop never syncs. A member
    whose training loss becomes non-finite gets its metrics up to that epoch, no more
    checkpoints, and `on_diverged(member, epoch, loss)`; training stops once every member has.
    """

    def __init__(self, run_dirs: list[Path], name: str, checkpoint_every: int = 500,
                 progress_every: int = 0, log_every: int | None = None, on_diverged=None):
        self.run_dirs = [Path(d) for d in run_dirs]
        self.name = name
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.progress_every = int(progress_every)
        self.log_every = max(1, int(log_every or self.checkpoint_every))
        self.on_diverged = on_diverged
        self.flushed = 0  # epochs already written to metrics.csv
        self.last_epoch: dict[int, int] = {}  # retired member -> its last recorded epoch
        self.t0 = time.perf_counter()
        self.start_epoch = 0

    def alive(self) -> list[int]:
        return [m for m in range(len(self.run_dirs)) if m not in self.last_epoch]

    # -- helpers
    def _flush(self, trainer: pl.Trainer, module, upto: int) -> None:
        if upto <= self.flushed:
            return
        block = module.history[:, self.flushed:upto].cpu()  # members x epochs x 3
        diverged = {}
        for member in self.alive():
            bad = (~torch.isfinite(block[member, :, 0])).nonzero()
            if len(bad):
                offset = int(bad[0])
                diverged[member] = (self.flushed + offset + 1, block[member, offset, 0].item())
        for member in self.alive():
            last = diverged[member][0] if member in diverged else upto
            rows = block[member, : last - self.flushed].tolist()
            path = self.run_dirs[member] / "metrics.csv"
            new_file = not path.exists() or path.stat().st_size == 0
            with open(path, "a", newline="") as f:
                w = csv.writer(f)
                if new_file:
                    w.writerow(METRICS_COLUMNS)
                for i, (loss, acc, test) in enumerate(rows, start=self.flushed + 1):
                    w.writerow([i, _fmt(loss), _fmt(acc), _fmt(test)])
        self._log(trainer, block, {m: e for m, (e, _) in diverged.items()})
        for member, (epoch, loss) in diverged.items():
            self.last_epoch[member] = epoch
            if self.on_diverged is None:
                raise NonFiniteLoss(f"{self.name} ({self.run_dirs[member]}): loss became {loss} at epoch {epoch}. "
                                    "Lower optimizer.lr, or try data.preprocess=standardize.")
            self.on_diverged(member, epoch, loss)
        if not self.alive():
            trainer.should_stop = True
        self.flushed = upto

    def _log(self, trainer: pl.Trainer, block: torch.Tensor, diverged: dict[int, int]) -> None:
        if not trainer.loggers:
            return
        solo = len(self.run_dirs) == 1
        members = self.alive()
        for i in range(block.shape[1]):
            epoch = self.flushed + i + 1
            metrics = {}
            for member in members:
                if epoch > diverged.get(member, epoch):
                    continue
                loss, acc, test = block[member, i].tolist()
                prefix = "" if solo else f"{self.run_dirs[member].name}/"  # ensembles: one series per member seed
                metrics.update({f"{prefix}train/loss": loss, f"{prefix}train/acc": acc})
                if not math.isnan(test):
                    metrics[f"{prefix}test/acc"] = test
            if metrics:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=epoch)

    def _save_checkpoint(self, trainer: pl.Trainer, module) -> None:
        alive = self.alive()
        if not alive:
            return
        paths = [d / "checkpoints" / "last.ckpt" for d in self.run_dirs]
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
        if len(paths) == 1:
            tmp = paths[0].with_name("last.ckpt.tmp")
            trainer.save_checkpoint(tmp, weights_only=False)
            os.replace(tmp, paths[0])
            return
        from dmlight.module import split_checkpoint

        whole = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        for i, (path, member) in enumerate(zip(paths, split_checkpoint(whole, len(paths)))):
            if i not in alive:  # a diverged member's directory is finished
                continue
            tmp = path.with_name("last.ckpt.tmp")
            torch.save(member, tmp)
            os.replace(tmp, path)

    # -- hooks
    def on_train_start(self, trainer, module) -> None:
        self.start_epoch = self.flushed = trainer.current_epoch
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        done = trainer.current_epoch + 1
        if done % self.log_every == 0 or done % self.checkpoint_every == 0 or done >= trainer.max_epochs:
            self._flush(trainer, module, done)
        if done % self.checkpoint_every == 0 or done >= trainer.max_epochs:
            self._save_checkpoint(trainer, module)
        if self.progress_every and (done % self.progress_every == 0 or done >= trainer.max_epochs):
            self._progress(trainer, module, done)

    def _progress(self, trainer, module, done: int) -> None:
        alive = self.alive()
        if not alive:
            return
        history = module.history[alive]
        loss, acc = history[:, done - 1, :2].mean(0).tolist()
        tests = history[:, :done, 2]
        seen = ~torch.isnan(tests[0])
        test = tests[:, seen][:, -1].mean().item() if seen.any() else float("nan")
        rate = (done - self.start_epoch) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (trainer.max_epochs - done) / max(rate, 1e-9)
        mean = "" if len(self.run_dirs) == 1 else f" (mean of {len(alive)})"
        print(f"[{self.name}] epoch {done}/{trainer.max_epochs}  loss {loss:.4g}  "
              f"train {100 * acc:.2f}%  test {100 * test:.2f}%{mean}  {rate:.0f} ep/s  ETA {eta:.0f}s",
              flush=True)


class Run:
    """A finished (or checkpointed) run, loaded for analysis: `.model`, `.cfg`, `.summary`, `.data()`."""

    def __init__(self, run_dir: Path, cfg: DictConfig, model: torch.nn.Module, summary: dict | None):
        self.run_dir, self.cfg, self.model, self.summary = run_dir, cfg, model, summary

    def data(self, device="cpu"):
        """(x_train, y_train, x_test, y_test), preprocessed exactly as in training."""
        from dmlight.data import load_data_cfg

        return load_data_cfg(self.cfg.data, device).as_tuple()

    def __repr__(self) -> str:
        status = "complete" if self.summary else "incomplete"
        return f"Run({self.model.name}, seed={self.cfg.seed}, {status}, {self.run_dir})"


def load_run(run_dir: str | Path, require_complete: bool = True) -> Run:
    """Load a run directory: the trained network (eval mode, CPU), its config and summary.

    Example:
        >>> run = load_run("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")  # doctest: +SKIP
        >>> x_train, y_train, x_test, y_test = run.data()
        >>> (run.model(x_test).argmax(1) == y_test).float().mean()
    """
    from dmlight.models import build_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a dmlight run directory (no config.yaml). "
                                "Pass a directory made by `python -m dmlight.train`.")
    summary = read_json(summary_path(run_dir))
    if require_complete and not (summary and summary.get("status") == "complete"):
        raise RuntimeError(f"{run_dir} holds no complete run (no summary.json): it crashed or is "
                           "still training. Rerun its training command to finish it, or pass "
                           "require_complete=False to load its last checkpoint.")
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoints/last.ckpt; rerun its training command.")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model = build_model(cfg.arch.name, cfg.activation.name, cfg.arch.head_bias, cfg.arch.hidden,
                        site=cfg.arch.site)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return Run(run_dir, cfg, model.eval(), summary)
