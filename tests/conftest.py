"""Shared fixtures. Trainings here are real: short full-batch runs on the 5,000 MNIST digits."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# No test may need a W&B account or the network.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)

REPO = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m module args...` in a subprocess, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def copy_run(run_dir: Path, tmp_path: Path, drop=()) -> Path:
    """A copy of a finished run in tmp_path/run, without the files named in `drop`: a test changes the copy only."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in drop:
        (copy / name).unlink()
    return copy


def perturb_again(run_dir: Path, tmp_path: Path, results: str, *overrides: str) -> Path:
    """`python -m dmlight.perturb` on a copy of `run_dir` whose `results` file was removed, with `overrides`;
    checks that it wrote that file again, byte for byte, and returns the copy."""
    copy = copy_run(run_dir, tmp_path, drop=[results])
    done = run_module("dmlight.perturb", f"run_dir={copy}", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (copy / results).read_text() == (run_dir / results).read_text()
    return copy


def kill_after_first_checkpoint(args: list[str], run_dir: Path, timeout: float = 120) -> None:
    """Run `python -m dmlight.train args hydra.run.dir=run_dir` and SIGKILL it once its first checkpoint exists."""
    import signal
    import time

    cmd = [sys.executable, "-m", "dmlight.train", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (Path(run_dir) / "summary.json").exists(), "killed before its first checkpoint"


def crash_at_epoch(monkeypatch, cfg, run_dir: Path, epoch: int) -> None:
    """Train `cfg` into `run_dir` and crash (RuntimeError) when epoch `epoch` ends, as a failed job would."""
    import pytorch_lightning as pl

    from dmlight import train as train_mod

    class Crash(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch + 1 == epoch:
                raise RuntimeError("simulated crash")

    original = train_mod.make_callbacks
    monkeypatch.setattr(train_mod, "make_callbacks", lambda *a: original(*a) + [Crash()])
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_mod.train(cfg, run_dir)
    finally:
        monkeypatch.setattr(train_mod, "make_callbacks", original)


def member_dir(cfg, seed: int) -> Path:
    """Where seed `seed`'s solo run lives by default: the run directory of `cfg` with that seed alone."""
    from dmlight.runs.layout import run_dir
    from dmlight.train import member_config

    return run_dir(member_config(cfg, seed))


def train_cfg(*overrides: str):
    from dmlight.config import compose_config

    return compose_config(["trainer.accelerator=cpu", "run.progress_every=0", *overrides])


@pytest.fixture(scope="session")
def relu_run(tmp_path_factory):
    """A ReLU (USE settings, no sweep) trained 300 epochs on mnist5k: (run_dir, summary)."""
    from dmlight.train import train

    run_dir = tmp_path_factory.mktemp("relu_run")
    cfg = train_cfg("experiment=use_distance_metrics", "perturbation=none", "trainer.max_epochs=300",
                    "run.checkpoint_every=100", "run.log_every=50")
    return run_dir, train(cfg, run_dir)
