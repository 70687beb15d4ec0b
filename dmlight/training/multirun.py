"""Hydra callback that ends a multirun with the list of points that failed, and why.

Jobs may run in other processes (joblib, SLURM), so each failed job leaves a small file in a
folder this sweep owns under `<paths.output_dir>/.sweeps/`, named to the jobs through the
environment (launchers pass it on); the callback reads and removes it when the sweep ends.
The sweep dir itself will not do: it may differ per job (it can interpolate swept values).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dmlight.runs.files import read_json, write_json_atomic


ENV = "DMLIGHT_SWEEP_FAILURES"


def record_sweep_failure(sweep_dir: Path, run_dir: Path, error: BaseException) -> None:
    folder = Path(os.environ.get(ENV) or Path(sweep_dir) / ".failures")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{os.getpid()}-{time.time_ns()}.json", {
        "run_dir": str(run_dir), "error": type(error).__name__, "message": str(error)})


class SweepReport(Callback):
    """Prints 'N runs failed' with each directory and error; the sweep then exits 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = Path(config.paths.output_dir).resolve() / ".sweeps" / f"{time.time_ns()}-{os.getpid()}"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[ENV] = str(folder)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        folder = Path(os.environ.pop(ENV, sweep_dir / ".failures"))
        records = sorted(folder.glob("*.json"))
        failed = [read_json(p) or {} for p in records]
        shutil.rmtree(folder, ignore_errors=True)
        if not failed:
            print(f"sweep finished: every run complete under {sweep_dir}", flush=True)
            return
        print(f"\n{len(failed)} run(s) of this sweep failed (fix the cause and rerun the same "
              "command: complete runs are skipped, interrupted ones resume):", file=sys.stderr)
        for info in failed:
            print(f"  {info.get('run_dir')}: {info.get('error')}: {info.get('message')}", file=sys.stderr)
        sys.exit(1)
