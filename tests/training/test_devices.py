"""Device choice and per-job GPU pinning, checked without a GPU."""
import json
import os
import shutil
import subprocess
import sys
import time

from omegaconf import OmegaConf
from hydra.types import RunMode

import pytest

from dmlight.training import devices
from dmlight.train import job_device
from tests.conftest import REPO, run_module, train_cfg

CLAIM = ("import sys, time; from dmlight.training.devices import GpuSlot\n"
         "with GpuSlot(int(sys.argv[1]), sys.argv[2], 0.05, lambda m: print(m, file=sys.stderr)) as g:\n"
         "    print(g, flush=True); time.sleep(float(sys.argv[3]))")


def claim(n, lock_dir, hold):
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(n), str(lock_dir), str(hold)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_distinct_gpus_and_a_late_job_waits_for_a_free_one(tmp_path):
    holders = [claim(3, tmp_path, 30) for _ in range(3)]
    got = sorted(int(p.stdout.readline()) for p in holders)
    assert got == [0, 1, 2]
    late = claim(3, tmp_path, 0)
    time.sleep(1.0)
    assert late.poll() is None  # all three busy: it waits rather than doubling up
    holders[1].kill()
    holders[1].wait()
    assert 0 <= int(late.stdout.readline()) < 3
    for p in holders:
        p.kill()
    late.wait()


def test_the_late_job_gets_exactly_the_freed_gpu(tmp_path):
    first, second = claim(2, tmp_path, 30), claim(2, tmp_path, 30)
    a, b = int(first.stdout.readline()), int(second.stdout.readline())
    late = claim(2, tmp_path, 0)
    second.kill()
    second.wait()
    assert int(late.stdout.readline()) == b and {a, b} == {0, 1}
    first.kill()
    late.wait()


def test_pinning_rules():
    assert devices.wants_pinning({"accelerator": "auto", "devices": 1}, 2, parallel=True)
    assert not devices.wants_pinning({"accelerator": "auto", "devices": 1}, 0, parallel=True)
    assert not devices.wants_pinning({"accelerator": "cpu", "devices": 1}, 2, parallel=True)
    assert not devices.wants_pinning({"accelerator": "auto", "devices": 1}, 2, parallel=False)
    assert not devices.wants_pinning({"accelerator": "gpu", "devices": -1, "strategy": "ddp"}, 2, True)
    assert devices.pin_trainer({"accelerator": "auto", "devices": 1, "max_epochs": 5}, 3) == {
        "accelerator": "gpu", "devices": [3], "max_epochs": 5}


def fake_hydra(mode, target, n_jobs=2):
    return OmegaConf.create({"mode": mode, "launcher": {"_target_": target, "n_jobs": n_jobs},
                             "job": {"num": 7}})


def test_a_parallel_job_on_a_two_gpu_machine_is_pinned(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: 2)
    cfg = train_cfg("data=synthetic", "trainer.accelerator=auto", f"run.gpu_slot_dir={tmp_path}")
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    with job_device(cfg, fake_hydra(RunMode.MULTIRUN, joblib)):
        assert cfg.trainer.accelerator == "gpu" and list(cfg.trainer.devices) == [0]
        other = train_cfg("data=synthetic", "trainer.accelerator=auto", f"run.gpu_slot_dir={tmp_path}")
        with job_device(other, fake_hydra(RunMode.MULTIRUN, joblib)):
            assert list(other.trainer.devices) == [1]
    # A single run, or the sequential basic launcher, is left to Lightning's own choice.
    single = train_cfg("data=synthetic", "trainer.accelerator=auto", f"run.gpu_slot_dir={tmp_path}")
    with job_device(single, fake_hydra(RunMode.RUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher")):
        assert single.trainer.accelerator == "auto" and single.trainer.devices == 1


def test_parallel_cpu_jobs_split_the_cores(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: 0)
    cfg = train_cfg("data=synthetic", "trainer.accelerator=auto")
    with job_device(cfg, fake_hydra(RunMode.MULTIRUN, "x.JoblibLauncher", n_jobs=2)):
        assert cfg.run.num_threads == max(1, len(os.sched_getaffinity(0)) // 2)
        assert cfg.trainer.accelerator == "auto"


@pytest.mark.parametrize("affinity, n_jobs, want", [(range(64), 4, 16), ({3, 9, 17, 40}, 4, 1), ({5, 6, 7}, 2, 1),
                                                    (range(12), 5, 2)])
def test_jobs_split_the_cores_they_may_use_not_the_nodes(monkeypatch, affinity, n_jobs, want):
    """SLURM's --cpus-per-task, taskset and cpusets restrict the affinity; a 64-core node's os.cpu_count() stays 64."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(affinity))
    assert devices.cpu_threads_per_job(n_jobs) == want


def test_one_usable_core_under_taskset_is_one_thread_per_job():
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    code = "from dmlight.training.devices import cpu_threads_per_job as t; print(t(1), t(2))"
    res = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1", "1"]


@pytest.mark.slow
def test_gpus_launcher_runs_parallel_cpu_jobs_here(tmp_path):
    res = run_module("dmlight.train", "-m", "hydra/launcher=gpus", "data=synthetic", "activation=relu,tanh",
                     "trainer.max_epochs=20", f"paths.output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("default/*/*/trainer.max_epochs=20/seed0/summary.json")]
    assert sorted(s["model_name"] for s in summaries) == ["ReLU", "Tanh"]
    assert all(s["device"] == "cpu" and s["torch_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
               for s in summaries)


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_same_sweep(tmp_path):
    res = run_module("dmlight.train", "-m", "hydra/launcher=local", "data=synthetic", "seed=0,1",
                     "trainer.max_epochs=10", f"paths.output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list(tmp_path.glob("default/synthetic-raw/ReLU/trainer.max_epochs=10/seed*/summary.json"))) == 2
