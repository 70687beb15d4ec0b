"""Lightning's WandbLogger, one W&B run per run directory across crashes (`logger=wandb` builds it).

A run killed after a checkpoint and rerun continues the W&B run its first attempt started: the run id
is kept in the run directory (`wandb_run.json`) and W&B resumes it (Lightning passes resume="allow").
What W&B holds of the earlier attempt is read back (offline: its run files, with W&B's own reader;
online: the resumed run's summary), rows it already has are not logged again (a resumed run recomputes
them bit for bit), and, offline, W&B's step counter goes on from the earlier attempt's last row. Rows the
killed process had logged but W&B had not yet written are logged again, so nothing is missing.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
import warnings
from pathlib import Path

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from dmlight.runs.files import WANDB_STATE_FILE, read_json, read_metrics, write_json_atomic
from dmlight.tracking.wandb_log import STEP, learning_curves

ID_CHARS = string.ascii_lowercase + string.digits


def offline_progress(save_dir: str | Path, run_id: str) -> tuple[int | None, int | None]:
    """(last trainer/global_step, W&B's next step) that the offline runs of `run_id` under `save_dir` hold,
    read with W&B's own reader (`wandb leet inspect`); (None, None) when they hold no row."""
    logs = sorted(Path(save_dir, "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"),
                  key=lambda p: p.stat().st_mtime_ns)
    for log in reversed(logs):
        res = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            warnings.warn(f"cannot read {log} with `wandb leet inspect` ({res.stderr.strip()[-200:]}): "
                          "its rows may be logged again", stacklevel=3)
            return None, None
        rows = [r["history"]["item"] for r in map(json.loads, filter(str.strip, res.stdout.splitlines()))
                if r.get("type") == "history"]
        if rows:
            epochs = [int(r[STEP]) for r in rows if STEP in r]
            return (max(epochs) if epochs else None), int(rows[-1]["_step"]) + 1
    return None, None


class ResumableWandbLogger(WandbLogger):
    """WandbLogger that continues the W&B run of an earlier attempt in the same `save_dir` (see the module).

    Example (conf/logger/wandb.yaml builds it; any WandbLogger argument passes through):
        >>> logger = ResumableWandbLogger(save_dir="outputs/.../seed0", project="dmlight", mode="offline")  # doctest: +SKIP
    """

    def __init__(self, save_dir: str, id: str | None = None, **kwargs):  # noqa: A002  (WandbLogger's own name)
        state_path = Path(save_dir) / WANDB_STATE_FILE
        earlier = (read_json(state_path) or {}).get("id")
        run_id = id or earlier or "".join(secrets.choice(ID_CHARS) for _ in range(12))
        write_json_atomic(state_path, {"id": run_id})
        super().__init__(save_dir=save_dir, id=run_id, **kwargs)
        mode = kwargs.get("mode") or os.environ.get("WANDB_MODE") or "online"
        self._done, self._resume_at = None, None  # the last epoch W&B has; where its step goes on (offline)
        self._ask_summary = earlier == run_id and mode == "online"  # the resumed run's summary tells
        if earlier == run_id and mode == "offline":
            done, self._resume_at = offline_progress(save_dir, run_id)
            self._done = 0 if done is None else done  # a W&B run that holds no row yet gets every epoch

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        run = self.experiment
        if self._ask_summary:
            self._ask_summary = False
            done = getattr(run, "summary", {}).get(STEP)
            self._done = int(done) if done is not None else 0
        if step is not None and self._done is not None and step <= self._done:
            return  # W&B has this row from an earlier attempt, with the same numbers
        if self._resume_at:
            # An offline resume starts W&B's counter at 0; this makes the next row the one after the last.
            run.log({}, step=self._resume_at, commit=False)
            self._resume_at = None
        if step is not None and self._done is not None:
            done, self._done = self._done, None
            self._backfill(done, step)
        super().log_metrics(metrics, step)

    def _backfill(self, done: int, step: int) -> None:
        """The learning-curve rows of epochs done+1 .. step-1, from metrics.csv: an earlier attempt trained and
        logged them, but W&B had not written them when it was killed (the checkpoint is later than W&B's data)."""
        for row in read_metrics(self._save_dir):
            epoch = int(row["epoch"])
            if done < epoch < step:
                test = row["test_acc"]
                super().log_metrics(learning_curves(row["train_loss"], row["train_acc"],
                                                    float(test) if test else None), epoch)
