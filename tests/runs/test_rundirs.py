"""Where runs live (dmlight/runs/layout.py): sweeps over any key, ensembles in moved directories."""
import json

import pytest

from dmlight.runs import layout as rundir
from tests.conftest import run_module, train_cfg

# Real digits, short: the CLI as a user runs it.
COMMON = ["data=mnist5k", "experiment=learn_distance_metrics", "trainer.max_epochs=40", "trainer.accelerator=cpu",
          "run.progress_every=0", "run.log_every=20", "run.checkpoint_every=20"]
VARIANT = "trainer.max_epochs=40"


def summaries(root):
    return {p.parent.relative_to(root).as_posix(): json.loads(p.read_text()) for p in root.rglob("summary.json")}


def test_the_variant_names_only_overrides_that_change_results():
    assert rundir.variant_name(["seed=3", "arch=mlp2", "data=mnist", "paths.output_dir=/x", "run.progress_every=0",
                                "trainer.accelerator=cpu", "logger=wandb", "hydra/launcher=gpus"]) == ""
    assert rundir.variant_name(["trainer.max_epochs=100", "optimizer=adam", "+arch.site=post_activation",
                                "optimizer.lr=2e-3"]) == \
        "arch.site=post_activation,optimizer.lr=2e-3,optimizer=adam,trainer.max_epochs=100"
    long = rundir.variant_name([f"perturbation.magnitudes=[{','.join(['0.123456'] * 40)}]"])
    assert len(long) == rundir.MAX_VARIANT and "/" not in long
    assert long != rundir.variant_name([f"perturbation.magnitudes=[{','.join(['0.123457'] * 40)}]"])


def test_default_config_paths_keep_their_names():
    assert train_cfg().run_subdir == "mnist5k-raw/ReLU/seed0"  # trainer.accelerator, run.* name nothing
    assert train_cfg("experiment=use_distance_metrics", "seed=4", "activation=abs").run_subdir == \
        "mnist5k-raw/Abs_Bias/seed4"
    assert train_cfg("arch=mlp2_neg", "seeds=[3,7,11]").run_subdir == "mnist5k-raw/ReLU2-Neg/ensemble-seeds3-11-n3"
    assert train_cfg("variant=my_try", "optimizer.lr=0.1").run_subdir == "mnist5k-raw/ReLU/my_try/seed0"


@pytest.mark.slow
def test_a_sweep_over_lr_gives_every_point_its_own_directory_and_a_rerun_skips_them(tmp_path):
    args = ["-m", *COMMON, "optimizer.lr=0.0018,0.0022", "seed=2,5", f"paths.output_dir={tmp_path}"]
    res = run_module("dmlight.train", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    found = summaries(tmp_path)
    want = {f"learn_distance_metrics/mnist5k-raw/ReLU/optimizer.lr={lr},{VARIANT}/seed{s}": (float(lr), s)
            for lr in ("0.0018", "0.0022") for s in (2, 5)}
    assert sorted(found) == sorted(want)
    assert all((found[d]["lr"], found[d]["seed"], found[d]["status"]) == (*want[d], "complete") for d in want)
    assert {found[d]["variant"] for d in want} == {f"optimizer.lr={lr},{VARIANT}" for lr in ("0.0018", "0.0022")}
    again = run_module("dmlight.train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("complete, skipping") == 4


@pytest.mark.slow
def test_an_ensemble_puts_its_members_where_their_solo_runs_go(tmp_path):
    """For hydra.sweep.dir and paths.output_dir a member lands where its solo run would; with
    hydra.run.dir=D (a directory of the user's naming) members go to D/seed<s>."""
    sweep, out, moved = tmp_path / "sweep", tmp_path / "out", tmp_path / "moved"
    res = run_module("dmlight.train", "-m", *COMMON, "seeds=[3,7,11]", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(summaries(sweep)) == [f"mnist5k-raw/ReLU/{VARIANT}/seed{s}" for s in (11, 3, 7)]
    solo = run_module("dmlight.train", "-m", *COMMON, "seed=3,11", f"hydra.sweep.dir={sweep}")
    assert solo.returncode == 0 and solo.stdout.count("complete, skipping") == 2, solo.stdout + solo.stderr[-2000:]

    res = run_module("dmlight.train", *COMMON, "seeds=[3,7,11]", f"paths.output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    base = f"learn_distance_metrics/mnist5k-raw/ReLU/{VARIANT}"
    assert sorted(summaries(out)) == [f"{base}/seed{s}" for s in (11, 3, 7)]
    assert (out / base / "ensemble-seeds3-11-n3" / ".hydra").is_dir()  # the job's own folder, beside them
    solo = run_module("dmlight.train", *COMMON, "seed=7", f"paths.output_dir={out}")
    assert solo.returncode == 0 and "complete, skipping" in solo.stdout, solo.stdout + solo.stderr[-2000:]

    res = run_module("dmlight.train", *COMMON, "seeds=[3,7,11]", f"hydra.run.dir={moved}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(summaries(moved)) == ["seed11", "seed3", "seed7"] and (moved / ".hydra").is_dir()
    # Same config, three places: the same numbers.
    for s in (3, 7, 11):
        metrics = {(d / "metrics.csv").read_bytes() for d in (sweep / f"mnist5k-raw/ReLU/{VARIANT}/seed{s}",
                                                               out / base / f"seed{s}", moved / f"seed{s}")}
        assert len(metrics) == 1
