"""The benchmarks run and write what the notes quote (their speeds are never asserted)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # real trainings: `make test-fast` leaves them out


def bench(script, *args, tmp_path):
    out = tmp_path / "sub" / "result.json"  # the folder does not exist yet: the script makes it
    res = subprocess.run([sys.executable, f"bench/{script}", *args, "--json", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, json.loads(out.read_text())


def test_train_speed_bench(tmp_path):
    stdout, r = bench("train_speed.py", "--epochs", "5", "--repeats", "1", tmp_path=tmp_path)
    assert "ratio" in stdout and r["plain_ms_per_epoch"] > 0 and r["ratio"] > 0
    assert r["identical"] is True and "identical metrics: yes" in stdout
    assert r["lightning_floor_ms_per_epoch"] > 0 and "floor" in stdout
    # every trial is kept, and the ratio is made of each side's fastest
    assert [len(r["trials_ms"][k]) for k in ("plain", "floor", "dmlight")] == [1, 1, 1]
    assert r["plain_ms_per_epoch"] == pytest.approx(min(r["trials_ms"]["plain"]))


def test_ensemble_speed_bench(tmp_path):
    stdout, r = bench("ensemble_speed.py", "--seeds", "2", "--epochs", "5", "--repeats", "2", tmp_path=tmp_path)
    assert "throughput ratio" in stdout and r["seeds"] == 2 and r["ratio"] > 0
    assert r["identical"] is True and "metrics identical to the solo runs': yes" in stdout
    assert len(r["solo_trials_s"]) == len(r["ensemble_trials_s"]) == 2
    assert (r["solo_s"], r["ensemble_s"]) == (min(r["solo_trials_s"]), min(r["ensemble_trials_s"]))
    # The bound is the solo epoch over the unshareable matrix products, as printed (no timing asserted).
    assert r["matmul_ms_per_epoch"] > 0 and r["solo_ms_per_epoch"] == pytest.approx(1e3 * r["solo_s"] / (2 * 5))
    assert r["max_ratio"] == pytest.approx(r["solo_ms_per_epoch"] / r["matmul_ms_per_epoch"])
    assert f"at most {r['max_ratio']:.2f}x" in stdout


def test_perturb_speed_bench_checks_identical_accuracies(tmp_path):
    stdout, r = bench("perturb_speed.py", "--data", "mnist5k", "--steps", "5", "--repeats", "1", tmp_path=tmp_path)
    assert r["points"] == 325 and r["rows"] == 4000
    assert r["identical"] is True and "identical: yes" in stdout


def test_offset_l2_bench_checks_same_numbers_and_counts_saved_memory(tmp_path):
    stdout, r = bench("offset_l2_speed.py", "--repeats", "1", tmp_path=tmp_path)
    assert r["same"] is True and "same output and gradients: yes" in stdout
    # Counted, not timed: autograd keeps rows x 10 x 128 terms for its backward pass; the blocked
    # layer keeps its inputs and output only (x, mu, alpha, y).
    assert r["dmlight_saved_mb"] == pytest.approx((4000 * 128 + 2 * 10 * 128 + 4000 * 10) * 4 / 2**20)
    assert r["plain_saved_mb"] > 10 * r["dmlight_saved_mb"]


def test_probe_cost_bench_counts_the_sweeps_during_training(tmp_path):
    stdout, r = bench("probe_cost.py", "--epochs", "20", "--every", "5", "--repeats", "1", tmp_path=tmp_path)
    assert r["sweeps_during_training"] == 4  # epochs 0, 5, 10, 15; epoch 20 is the final sweep's
    assert r["points_per_sweep"] == 34 + 34 + 28  # conf/perturbation/use.yaml's during_grids
    assert len(r["probe_share_of_training"]) == len(r["wall_with_sweeps_s"]) == len(r["wall_without_sweeps_s"]) == 1
    share = r["sweeps_during_training"] * r["seconds_per_sweep_during"] / r["training_seconds"]
    assert r["probe_share_best"] == pytest.approx(share) and r["seconds_final_full_grid"] > 0
    assert f"{100 * share:.1f}%" in stdout and "goal <= 10%" in stdout
