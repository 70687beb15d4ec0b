"""Resuming with a stateful optimizer (Adam, SGD with momentum) equals never stopping.

Plain SGD keeps no state, so tests/training/test_survive.py's resume would pass even if the
checkpoint lost the optimizer's state. Adam's moments and SGD's momentum buffer must come
back too, for a solo run killed with SIGKILL and for a crashed ensemble.

Runs use one torch thread (run.num_threads=1): on a shared 2-core machine two OpenMP threads
spin against other processes and an epoch takes ~10x longer.
"""
import json
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from dmlight import train as train_mod
from dmlight.runs.files import read_metrics
from dmlight.train import train
from tests.conftest import member_dir
from tests.conftest import REPO, kill_after_first_checkpoint, train_cfg

pytestmark = pytest.mark.slow  # real trainings: `make test-fast` leaves them out

EPOCHS = 300
COMMON = ["experiment=use_distance_metrics", "perturbation=none", f"trainer.max_epochs={EPOCHS}", "seed=7",
          "trainer.accelerator=cpu", "run.checkpoint_every=50", "run.log_every=25", "run.progress_every=0",
          "run.num_threads=1"]

OPTIMIZERS = {
    # name: (overrides, the state each parameter must carry in the checkpoint)
    "adam": (["optimizer=adam", "optimizer.lr=1e-4"], {"step", "exp_avg", "exp_avg_sq"}),
    "sgd_momentum": (["optimizer.momentum=0.9"], {"momentum_buffer"}),
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """train() sets the process's torch threads from run.num_threads; give the default back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _optimizer_state(ckpt_path) -> list[dict]:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 1
    return list(ckpt["optimizer_states"][0]["state"].values())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sigkill_then_rerun_with_a_stateful_optimizer_equals_an_uninterrupted_run(name, tmp_path):
    overrides, state_keys = OPTIMIZERS[name]
    args = [*COMMON, *overrides]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dmlight.train", *args, f"hydra.run.dir={run_dir}"]
    kill_after_first_checkpoint(args, run_dir)
    killed_at = len(read_metrics(run_dir))
    assert killed_at < EPOCHS

    # The checkpoint really holds a stateful optimizer's state, one entry per parameter,
    # not all zero: what a resume that dropped it would get wrong.
    state = _optimizer_state(run_dir / "checkpoints" / "last.ckpt")
    assert len(state) == 4  # hidden weight and bias, head weight and bias
    for slots in state:
        assert set(slots) == state_keys
        tensors = [v for k, v in slots.items() if k != "step"]
        assert all(v.abs().sum() > 0 for v in tensors)

    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout and "(epoch " in res.stdout
    resumed = json.loads((run_dir / "summary.json").read_text())

    straight = train(train_cfg(*args), tmp_path / "straight")
    assert resumed["seed"] == straight["seed"] == 7
    for key in ("train_loss", "train_acc", "test_acc", "units"):
        assert resumed[key] == straight[key], key
    assert (run_dir / "metrics.csv").read_bytes() == (tmp_path / "straight" / "metrics.csv").read_bytes()
    assert len(read_metrics(run_dir)) == EPOCHS


ENSEMBLE = ["experiment=learn_distance_metrics", "trainer.max_epochs=150", "run.checkpoint_every=50",
            "run.log_every=25", "optimizer=adam", "optimizer.lr=1e-4", "run.num_threads=1"]
SEEDS = (5, 9)


class Crash(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch + 1 == 70:  # after epoch 50's checkpoint, before epoch 100's
            raise RuntimeError("simulated crash")


SUMMARY_KEYS = ("train_loss", "train_acc", "test_acc", "units")


@pytest.fixture(scope="module")
def adam_ensemble(tmp_path_factory):
    """The uninterrupted Adam ensemble: (its config, its member summaries)."""
    out = tmp_path_factory.mktemp("adam_ensemble")
    threads = torch.get_num_threads()
    cfg = train_cfg(*ENSEMBLE, f"seeds=[{','.join(map(str, SEEDS))}]", f"paths.output_dir={out}/straight")
    summaries = train(cfg)
    torch.set_num_threads(threads)
    return cfg, summaries


def test_a_crashed_adam_ensemble_resumes_to_the_numbers_of_an_uninterrupted_one(adam_ensemble, tmp_path,
                                                                                 monkeypatch):
    straight_cfg, straight = adam_ensemble
    cfg = train_cfg(*ENSEMBLE, f"seeds=[{','.join(map(str, SEEDS))}]", f"paths.output_dir={tmp_path}/crashed")
    original = train_mod.make_callbacks
    monkeypatch.setattr(train_mod, "make_callbacks", lambda *a: original(*a) + [Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.setattr(train_mod, "make_callbacks", original)
    dirs = [member_dir(cfg, s) for s in SEEDS]
    assert not any((d / "summary.json").exists() for d in dirs)
    # Each member's checkpoint holds its own Adam moments (the ensemble's state, split).
    states = [_optimizer_state(d / "checkpoints" / "last.ckpt") for d in dirs]
    for slots_a, slots_b in zip(*states):
        assert set(slots_a) == {"step", "exp_avg", "exp_avg_sq"}
        assert slots_a["step"].item() == slots_b["step"].item() == 50
        assert not torch.equal(slots_a["exp_avg"], slots_b["exp_avg"])

    resumed = train(cfg)
    assert [r["seed"] for r in resumed] == [s["seed"] for s in straight] == list(SEEDS)
    for r, s in zip(resumed, straight):
        assert {k: r[k] for k in SUMMARY_KEYS} == {k: s[k] for k in SUMMARY_KEYS}
    for seed, d in zip(SEEDS, dirs):
        assert (d / "metrics.csv").read_bytes() == (member_dir(straight_cfg, seed) / "metrics.csv").read_bytes()
        assert [int(r["epoch"]) for r in read_metrics(d)] == list(range(1, 151))
    assert resumed[0]["train_loss"] != resumed[1]["train_loss"]  # the members really differ


def test_adam_ensemble_members_match_solo_adam_runs(adam_ensemble, tmp_path):
    """Adam is element-wise and the stacked Linear makes each member's own nn.Linear calls on
    a CPU, so a member trains to its solo run's bytes, every epoch."""
    straight_cfg, straight = adam_ensemble
    for seed, member in zip(SEEDS, straight):
        cfg = train_cfg(*ENSEMBLE, f"seed={seed}", f"paths.output_dir={tmp_path}")
        solo = train(cfg, member_dir(cfg, seed))
        assert solo["ensemble_size"] == 1 and member["ensemble_size"] == 2
        assert {k: solo[k] for k in SUMMARY_KEYS} == {k: member[k] for k in SUMMARY_KEYS}
        solo_rows, member_rows = read_metrics(member_dir(cfg, seed)), read_metrics(member_dir(straight_cfg, seed))
        assert len(solo_rows) == len(member_rows) == 150
        assert solo_rows == member_rows
