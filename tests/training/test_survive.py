"""Runs survive: kill -9 and rerun resumes to the same numbers; one writer per run dir."""
import json
import os
import subprocess
import sys

import pytest

from dmlight.runs.layout import RunDirBusy, RunLock
from dmlight.runs.files import read_metrics
from dmlight.train import train
from tests.conftest import REPO, crash_at_epoch, kill_after_first_checkpoint, train_cfg

ARGS = ["experiment=use_distance_metrics", "perturbation=none", "trainer.max_epochs=200",
        "trainer.accelerator=cpu", "run.checkpoint_every=50", "run.log_every=25", "run.progress_every=0"]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_rerun_equals_an_uninterrupted_run(tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dmlight.train", *ARGS, f"hydra.run.dir={run_dir}"]
    kill_after_first_checkpoint(ARGS, run_dir)
    killed_at = len(read_metrics(run_dir))
    assert killed_at < 200

    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout and "(epoch " in res.stdout
    resumed = json.loads((run_dir / "summary.json").read_text())

    straight = train(train_cfg(*ARGS), tmp_path / "straight")
    for key in ("train_loss", "train_acc", "test_acc"):
        assert resumed[key] == straight[key], key
    # The metrics file is whole again: every epoch once, the same numbers as the straight run.
    assert (run_dir / "metrics.csv").read_text() == (tmp_path / "straight" / "metrics.csv").read_text()


def test_two_writers_of_one_run_dir_are_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()}"):
            train(train_cfg("data=synthetic", "trainer.max_epochs=2"), tmp_path)
    # Released on exit, and by the kernel when a holder dies.
    assert train(train_cfg("data=synthetic", "trainer.max_epochs=2"), tmp_path)["status"] == "complete"


def test_a_killed_lock_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from dmlight.runs.layout import RunLock\n"
        f"l = RunLock(Path({str(tmp_path)!r})).__enter__(); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirBusy):
        RunLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path):
        pass


@pytest.mark.slow
def test_a_resumed_mini_batch_run_sees_the_batches_an_uninterrupted_one_does(tmp_path, monkeypatch):
    """Each epoch's batch order comes from (data.shuffle_seed, epoch): a crash and a rerun
    change nothing, down to the last digit of metrics.csv."""
    args = ["data=mnist5k", "data.batch_size=1000", "optimizer.lr=0.0005", "trainer.max_epochs=8",
            "run.checkpoint_every=3", "run.log_every=1"]
    crash_at_epoch(monkeypatch, train_cfg(*args), tmp_path / "crashed", 5)
    assert not (tmp_path / "crashed" / "summary.json").exists()
    train(train_cfg(*args), tmp_path / "crashed")  # resumes from epoch 3's checkpoint
    train(train_cfg(*args), tmp_path / "straight")
    assert (tmp_path / "crashed" / "metrics.csv").read_bytes() == (tmp_path / "straight" / "metrics.csv").read_bytes()
    # and the order really is shuffled per epoch: another shuffle_seed trains differently
    other = train(train_cfg(*args, "data.shuffle_seed=1"), tmp_path / "other")
    assert other["train_loss"] != json.loads((tmp_path / "straight" / "summary.json").read_text())["train_loss"]
