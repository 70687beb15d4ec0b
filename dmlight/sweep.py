"""Hydra callback that ends a multirun with the list of points that failed, and why.

Jobs may run in other processes (joblib, SLURM), so each failed job leaves a small file in
`<sweep dir>/.failures/`; the callback reads and clears them when the sweep ends.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dmlight.runs import read_json, write_json_atomic


def record_sweep_failure(sweep_dir: Path, run_dir: Path, error: BaseException) -> None:
    folder = Path(sweep_dir) / ".failures"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{os.getpid()}-{time.time_ns()}.json", {
        "run_dir": str(run_dir), "error": type(error).__name__, "message": str(error)})


class SweepReport(Callback):
    """Prints 'N runs failed' with each directory and error; the sweep then exits 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = sorted((sweep_dir / ".failures").glob("*.json"))
        failed = [read_json(p) or {} for p in records]
        for p in records:
            p.unlink()
        if not failed:
            print(f"sweep finished: every run complete under {sweep_dir}", flush=True)
            return
        print(f"\n{len(failed)} run(s) of this sweep failed (fix the cause and rerun the same "
              "command: complete runs are skipped, interrupted ones resume):", file=sys.stderr)
        for info in failed:
            print(f"  {info.get('run_dir')}: {info.get('error')}: {info.get('message')}", file=sys.stderr)
        sys.exit(1)
