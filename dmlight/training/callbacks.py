"""Lightning callbacks of dmlight's training: the run recorder."""
from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from dmlight.errors import NonFiniteLoss
from dmlight.tracking.loggers import member_loggers
from dmlight.training.progress import format_rate, format_seconds
from dmlight.runs.files import append_metrics, last_checkpoint_path
from dmlight.tracking.wandb_log import learning_curves



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
            append_metrics(self.run_dirs[member], self.flushed + 1, block[member, : last - self.flushed].tolist())
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
        # Each member logs to its own loggers (one W&B run per seed, as its solo run would); a logger no
        # member owns (a save_dir of its own) gets every member's series, prefixed by its seed folder.
        own, shared = member_loggers(trainer.loggers, self.run_dirs)
        members = self.alive()
        for i in range(block.shape[1]):
            epoch = self.flushed + i + 1
            prefixed = {}
            for member in members:
                if epoch > diverged.get(member, epoch):
                    continue
                metrics = learning_curves(*block[member, i].tolist())
                for logger in own[member]:
                    logger.log_metrics(metrics, step=epoch)
                if shared:
                    prefixed.update({f"{self.run_dirs[member].name}/{k}": v for k, v in metrics.items()})
            for logger in shared if prefixed else ():
                logger.log_metrics(prefixed, step=epoch)

    def _save_checkpoint(self, trainer: pl.Trainer) -> None:
        # dmlight.training.checkpoints.MemberCheckpoints writes each live member's own last.ckpt.
        if self.alive():
            trainer.save_checkpoint(last_checkpoint_path(self.run_dirs[0]), weights_only=False)

    # -- hooks
    def on_train_start(self, trainer, module) -> None:
        self.start_epoch = self.flushed = trainer.current_epoch
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        done = trainer.current_epoch + 1
        if done % self.log_every == 0 or done % self.checkpoint_every == 0 or done >= trainer.max_epochs:
            self._flush(trainer, module, done)
        if done % self.checkpoint_every == 0 or done >= trainer.max_epochs:
            self._save_checkpoint(trainer)
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
              f"train {100 * acc:.2f}%  test {100 * test:.2f}%{mean}  {format_rate(rate)}  ETA {format_seconds(eta)}",
              flush=True)
