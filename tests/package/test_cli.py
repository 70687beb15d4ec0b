"""The command line answers at once, progress lines read well, and every result says where it came from."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dmlight.training.progress import format_rate, format_seconds, seed_range
from tests.conftest import REPO, train_cfg

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime -m dmlight.train args`: its result and every module it imported."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "dmlight.train", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return res, names


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job", "experiment=learn_distance_metrics", "arch=mlp2"],
                                  ["activation.name=swish", "data=synthetic"], ["arch=mlp3"]],
                         ids=["help", "cfg-job", "bad-activation", "bad-arch"])
def test_help_config_and_config_errors_import_neither_torch_nor_lightning(args, tmp_path):
    res, names = imported_modules(*args, f"hydra.run.dir={tmp_path}/run")  # a failing job's folder goes there
    assert "omegaconf" in names and "hydra" in names  # the check sees imports at all
    assert not names & {m for m in names if m.split(".")[0] in HEAVY}, sorted(n for n in names if "torch" in n)[:5]
    if args[0].startswith("activation"):
        assert res.returncode == 2 and "unknown activation 'swish'; accepted: relu, abs" in res.stderr
    elif args[0].startswith("arch"):
        assert res.returncode != 0 and "arch/mlp3" in res.stderr
    else:
        assert res.returncode == 0 and ("max_epochs: 5000" in res.stdout or "dmlight.train" in res.stdout)


def test_composing_a_config_in_python_imports_neither_torch_nor_lightning():
    code = ("import sys; import dmlight.train; from dmlight.config import compose_config, model_name\n"
            "cfg = compose_config(['experiment=offset_l2', 'activation=abs', 'seeds=[3,7]'])\n"
            "assert model_name(cfg) == 'Abs-L2' and cfg.run_subdir.endswith('ensemble-seeds3-7-n2')\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_hydra_tab_completion_of_dmlight_train():
    """`eval "$(dmlight-train -sc install=bash)"` (README): Tab then asks `dmlight-train -sc query=bash`."""
    exe = str(Path(sys.executable).parent / "dmlight-train")
    install = subprocess.run([exe, "-sc", "install=bash"], capture_output=True, text=True, timeout=120)
    assert install.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion dmlight-train" \
        in install.stdout
    line = "dmlight-train arch=mlp2"
    query = subprocess.run([exe, "-sc", "query=bash"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert query.returncode == 0 and query.stdout.split() == ["arch=mlp2", "arch=mlp2_neg"]


def test_progress_rates_durations_and_seed_lists_read_well():
    assert [format_rate(r) for r in (250.0, 14.4, 4.54, 1.0, 0.222, 0.05, 1 / 123.4)] == \
        ["250 ep/s", "14 ep/s", "4.5 ep/s", "1.0 ep/s", "4.5 s/epoch", "20 s/epoch", "123 s/epoch"]
    assert [format_seconds(s) for s in (0.4, 59, 125, 5999, 7200 + 900)] == ["0s", "59s", "2.1 min", "100.0 min", "2.2 h"]
    assert seed_range(range(20)) == "0-19" and seed_range([11, 3, 7]) == "3,7,11"
    assert seed_range([0, 1, 2, 5, 8, 9, 10, 12]) == "0-2,5,8-10,12" and seed_range([4]) == "4"


@pytest.mark.slow
def test_every_summary_says_what_produced_it(tmp_path):
    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf

    import dmlight
    from dmlight.train import train
    from tests.conftest import member_dir

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    want = {"dmlight": dmlight.__version__, "torch": torch.__version__, "lightning": pl.__version__,
            "python": platform.python_version(), "device": "cpu", "device_name": cpu,
            "git_commit": git("rev-parse", "HEAD") or None,
            "source": "git checkout" if git("rev-parse", "HEAD") else "installed package (no git checkout: commit unknown)",
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if git("rev-parse", "HEAD") else None}
    cfg = train_cfg("data=synthetic", "trainer.max_epochs=4", "seeds=[2,5]", "run.num_threads=1", "logger=csv",
                    f"paths.output_dir={tmp_path}")
    threads = torch.get_num_threads()
    try:
        summaries = train(cfg)
    finally:
        torch.set_num_threads(threads)
    for seed, summary in zip((2, 5), summaries):
        prov = json.loads((member_dir(cfg, seed) / "summary.json").read_text())["provenance"]
        assert prov == summary["provenance"] == {**want, "torch_threads": 1}
    hparams = OmegaConf.load(next(tmp_path.rglob("csv_logs/hparams.yaml")))  # what a logger's config gets
    assert OmegaConf.to_container(hparams.provenance) == {**want, "torch_threads": 1}
