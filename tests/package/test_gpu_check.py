import pytest
"""bench/gpu_check.py on a machine without a GPU: it says so and exits 0; its checks' logic runs
on the CPU (`--device cpu --quick`) without mlxtend or wandb; the Makefile targets exist."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO

# Imported by nothing the check runs: GPU machines lack them (see the Makefile's gpu-wheels).
BLOCKER = '''
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlxtend", "wandb"):
            raise ModuleNotFoundError(f"{name} is blocked: GPU machines do not have it", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
'''


def gpu_check(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "bench/gpu_check.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "disabled", **(env or {})})


def test_without_cuda_it_says_so_writes_cuda_false_and_exits_0(tmp_path):
    out = tmp_path / "new" / "result.json"
    res = gpu_check("--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no CUDA GPU" in res.stdout
    result = json.loads(out.read_text())
    assert result["cuda"] is False and result["checks"] == {} and result["passed"] is True


@pytest.mark.slow
def test_every_check_runs_on_the_cpu_without_mlxtend_or_wandb(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)  # also in the launcher's subprocess
    pythonpath = os.pathsep.join([str(tmp_path / "site"), str(REPO)])
    out = tmp_path / "result.json"
    res = gpu_check("--device", "cpu", "--quick", "--out", str(out), env={"PYTHONPATH": pythonpath})
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    r = json.loads(out.read_text())
    checks = r["checks"]
    names = ["device", "ensemble_grads", "offset_l2", "timing", "cpu_gpu_agreement", "perturbation_sweep",
             "launcher_gpus"]
    assert list(checks) == names and r["passed"] is True and r["failed"] == [] and r["cuda"] is False
    lines = [line for line in res.stdout.splitlines() if line.startswith(("PASS ", "FAIL ", "SKIP "))]
    assert [line.split(":")[0] for line in lines] == [f"PASS {n}" for n in names]  # one line per check
    assert (out.parent / "gpu_check.log").read_text().count("done: train acc") >= 10  # trainings logged, not printed

    assert checks["device"]["auto_run_device"] == "cpu" and checks["device"]["trainer_cpu_run_device"] == "cpu"
    g = checks["ensemble_grads"]
    assert set(g["layer_rel_max_err"]) == {"hidden.weight", "head.weight", "head.input"}
    assert max(g["layer_rel_max_err"].values()) <= g["layer_tolerance"] == 1e-4
    assert max(g["network_rel_norm_err"].values()) <= g["network_tolerance"]
    for case in checks["offset_l2"]["cases"].values():
        assert case["ok"] and case["rows"] == 2000 and case["blocks"] >= 1 and case["blocked_peak_mb"] is None
    assert checks["offset_l2"]["cases"]["stack"]["members"] == 4
    for which, rows in (("small", 400), ("large", 2000)):
        t = checks["timing"][which]
        assert t["rows"] == rows and t["data"] == "synthetic" and t["solo_ms_per_epoch"] > 0
        assert t["ensemble_ms_per_epoch"] > 0 and t["solo_devices"] == t["ensemble_devices"] == ["cpu"]
        assert len(t["ensemble_final_train_acc"]) == 4
    a = checks["cpu_gpu_agreement"]
    assert a["tolerance_pp"] == 0.5 and a["abs_diff_pp"] == {"train_acc": 0.0, "test_acc": 0.0}  # CPU both sides
    s = checks["perturbation_sweep"]
    assert s["points"] == 325 and s["rows"] == 2000 and s["max_diff_samples"] == 0 and s["tolerance_samples"] == 2
    lg = checks["launcher_gpus"]
    assert lg["returncode"] == 0 and lg["pinned"] == [] and lg["run_devices"] == ["cpu", "cpu"]


def test_wheels_folder_is_ignored_by_git():
    res = subprocess.run(["git", "check-ignore", "-q", ".whl/hydra_core-1.3.8-py3-none-any.whl"], cwd=REPO)
    assert res.returncode == 0


def make_n(*args):
    res = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_make_targets_show_their_commands():
    assert "bench/gpu_check.py" in make_n("gpu-check")
    with_python3 = make_n("gpu-check", "PY=python3", "ARGS=--quick")
    assert "python3 bench/gpu_check.py --quick" in with_python3 and "install" not in with_python3.split("else")[-1]
    wheels = make_n("gpu-wheels")
    assert "pip download" in wheels and "--python-version 3.12" in wheels and "-d .whl" in wheels
    for pkg in ("hydra-core==", "omegaconf==", "PyYAML==", "hydra-joblib-launcher==", "joblib==",
                "antlr4-python3-runtime==4.9.3"):
        assert pkg in wheels
