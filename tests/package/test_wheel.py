"""dmlight as a new user installs it: the built wheel in a throwaway folder, run from an empty folder.

No checkout on the path: every command finds its configs inside the installed package, writes under the
working folder's outputs/, and a user's own configs (--config-dir) bring their own data set and network
by `_target_`, composed with dmlight's experiment. Nothing is written into the installed package.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

USER_CODE = '''
from collections import OrderedDict

import numpy as np
from torch import nn


def blobs(n_train=300, n_test=90, dim=12, seed=5):
    """Three Gaussian blobs: a data set dmlight has never heard of."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (3, dim))

    def draw(n):
        y = np.arange(n) % 3
        return (centers[y] + rng.normal(0, 1, (n, dim))).astype(np.float32), y

    (a, b), (c, d) = draw(n_train), draw(n_test)
    return a, b, c, d


def tiny_mlp(in_features, n_classes, width=7):
    return nn.Sequential(OrderedDict(hidden=nn.Linear(in_features, width), activation=nn.ReLU(),
                                     head=nn.Linear(width, n_classes)))
'''

USER_CONF = {
    "data/blobs.yaml": "name: blobs\n_target_: userproj.parts.blobs\nn_train: 240\n",
    "arch/tiny.yaml": "name: tiny_${activation.name}\n_target_: userproj.parts.tiny_mlp\nwidth: 7\n",
    "experiment/mine.yaml": ("# @package _global_\ndefaults:\n  - use_distance_metrics\n  - override /data: blobs\n"
                             "  - override /arch: tiny\nexperiment_name: mine\ntrainer:\n  max_epochs: 15\n"
                             "optimizer:\n  lr: 0.01\n"),
}


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` but compiled bytecode: (size, mtime in ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _untracked() -> str | None:
    res = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
                         capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, environment): the wheel built from this checkout, installed with --target."""
    tmp = tmp_path_factory.mktemp("wheel")
    before = _untracked()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(REPO), "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    if before is not None:  # building leaves nothing behind that git would show
        assert _untracked() == before
    wheel, = (tmp / "dist").glob("dmlight-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("dmlight/conf/") for n in names if n.startswith("dmlight/conf/")}
    assert shipped == {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    site = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]
    user = tmp / "user_code" / "userproj"
    user.mkdir(parents=True)
    (user / "__init__.py").write_text("")
    (user / "parts.py").write_text(USER_CODE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(user.parent)]), "WANDB_MODE": "disabled",
           "PYTHONNOUSERSITE": "1"}
    return site, env


def _run(cmd: list[str], cwd: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def test_the_installed_wheel_trains_perturbs_and_reports_from_an_empty_folder(installed, tmp_path):
    site, env = installed
    work = tmp_path / "empty"
    work.mkdir()
    package = site / "dmlight"
    untouched = _files(site)
    py = [sys.executable]

    # The package that answers is the wheel's, its version the metadata's, its provenance says "no git".
    probe = _run([*py, "-c", "import dmlight, importlib.metadata as m; from dmlight.runs.provenance import provenance; "
                  "p = provenance('cpu'); print(dmlight.__file__, dmlight.__version__, m.version('dmlight'), "
                  "p['git_commit'], p.get('source', '-').split()[0])"], work, env)
    file, version, meta, commit, source = probe.stdout.split()
    assert Path(file).parent == package and version == meta and commit == "None" and source == "installed"

    # 1. The installed command, dmlight's own data and network.
    _run([str(site / "bin" / "dmlight-train"), "data=mnist5k", "trainer.max_epochs=12", "perturbation=none",
          "run.progress_every=0", "trainer.accelerator=cpu"], work, env)
    relu = work / "outputs" / "default" / "mnist5k-raw" / "ReLU" / "perturbation=none,trainer.max_epochs=12" / "seed0"
    summary = json.loads((relu / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs"] == 12 and summary["train_acc"] > 0.3
    assert summary["provenance"]["git_commit"] is None and summary["provenance"]["dmlight"] == meta

    # 2. A user's experiment from --config-dir: their data set and network by _target_, on USE's settings.
    conf = tmp_path / "my_conf"
    for name, text in USER_CONF.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    _run([*py, "-m", "dmlight.train", "--config-dir", str(conf), "experiment=mine", "run.progress_every=0",
          "trainer.accelerator=cpu"], work, env)
    mine = work / "outputs" / "mine" / "blobs-raw" / "tiny_relu" / "seed0"  # the experiment file's settings: no variant
    summary = json.loads((mine / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs"] == 15 and summary["head_bias"] is True
    assert summary["train_acc"] > 0.5  # three well-separated blobs
    rows = (mine / "perturbation.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 100 + 100 + 125  # header, baseline, USE's scale, clip, offset grids
    ranges = (mine / "unit_ranges.csv").read_text().splitlines()
    assert len(ranges) == 1 + 7  # the user's 7 hidden units

    # 3. Perturb both runs again, with both spellings of the command.
    _run([str(site / "bin" / "dmlight-perturb"), f"run_dir={relu}", "perturbation=offset"], work, env)
    assert len((relu / "perturbation.csv").read_text().splitlines()) == 1 + 1 + 125
    _run([*py, "-m", "dmlight.perturb", f"run_dir={mine}", "perturbation=scale"], work, env)
    assert len((mine / "perturbation.csv").read_text().splitlines()) == len(rows) + 1 + 100

    # 4. The report and the dashboard spec, under this folder.
    rep = _run([*py, "-m", "dmlight.report", "outputs/default", "outputs/mine"], work, env)
    assert "2 complete" in rep.stdout
    assert (work / "outputs" / "default" / "report" / "report.md").is_file()
    _run([*py, "-m", "dmlight.dashboard", "--project", "p", "--offline"], work, env)
    assert (work / "outputs" / "dashboard" / "p.json").is_file()

    # 5. Tab completion from the installed command lists dmlight's config groups.
    comp = _run([str(site / "bin" / "dmlight-train"), "-sc", "query=bash"], work,
                {**env, "COMP_LINE": "dmlight-train arch=mlp", "COMP_POINT": "23"})
    assert {"arch=mlp", "arch=mlp2", "arch=mlp2_neg"} <= set(comp.stdout.split())

    assert _files(site) == untouched  # nothing written into the installed package
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]


def test_bad_targets_and_groups_name_the_value_and_the_fix(installed, tmp_path):
    site, env = installed
    conf = tmp_path / "bad_conf" / "arch"
    conf.mkdir(parents=True)
    (conf / "ghost.yaml").write_text("name: ghost\n_target_: nowhere_pkg.nets.make\n")
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "dmlight.train", "--config-dir",
                          str(tmp_path / "bad_conf"), "arch=ghost"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    message = res.stderr.splitlines()
    errors = [line for line in message if line.startswith("error:")]
    assert errors and "arch._target_=nowhere_pkg.nets.make" in errors[0] and "no module named 'nowhere_pkg" \
        in errors[0] and "PYTHONPATH" in errors[0]
    assert not any(line.split("|")[-1].strip() == "torch" for line in message)  # before torch loads
    res = subprocess.run([sys.executable, "-m", "dmlight.train", "arch=mlp3"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "arch/mlp3" in res.stderr and "mlp2_neg" in res.stderr  # Hydra's own message
