import csv
import json

import pytest
import torch

import dmlight
from dmlight.runs.layout import RunDirConflict
from dmlight.runs.files import read_metrics
from dmlight.train import train
from tests.conftest import run_module, train_cfg

SUMMARY_KEYS = {"model_name", "arch", "activation", "head_bias", "seed", "data", "preprocess", "epochs",
                "train_loss", "train_acc", "test_acc", "status"}


@pytest.mark.slow
def test_relu_trains_on_real_digits(relu_run):
    run_dir, summary = relu_run
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "complete" and summary["model_name"] == "ReLU_Bias"
    assert (summary["data"], summary["preprocess"], summary["epochs"]) == ("mnist5k", "raw", 300)
    # 300 full-batch SGD steps at lr 0.001 on raw pixels: ~99.5% train, ~86% test on 4,000/1,000 digits.
    assert summary["train_acc"] > 0.98
    assert 0.83 < summary["test_acc"] < 0.95
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 301))
    assert float(rows[-1]["train_loss"]) < 0.1 < float(rows[0]["train_loss"])
    assert all(r["test_acc"] for r in rows)  # eval_every=1
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "config.yaml").exists()


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_another_seed_does_not(relu_run, tmp_path):
    run_dir, summary = relu_run
    cfg = train_cfg("experiment=use_distance_metrics", "perturbation=none", "trainer.max_epochs=300",
                    "run.checkpoint_every=100", "run.log_every=50")
    again = train(cfg, tmp_path / "again")
    assert (tmp_path / "again" / "metrics.csv").read_text() == (run_dir / "metrics.csv").read_text()
    for key in ("train_loss", "train_acc", "test_acc"):
        assert again[key] == summary[key]
    cfg.seed = 1
    other = train(cfg, tmp_path / "other")
    assert other["train_loss"] != summary["train_loss"]


@pytest.mark.slow
def test_load_run_gives_the_trained_model_and_its_data(relu_run):
    run_dir, summary = relu_run
    run = dmlight.load_run(run_dir)
    assert run.model.name == "ReLU_Bias" and not run.model.training
    assert next(run.model.parameters()).device.type == "cpu"
    x_train, y_train, x_test, y_test = run.data()
    assert x_train.shape == (4000, 784) and x_test.max() == 255
    with torch.no_grad():
        test_acc = (run.model(x_test).argmax(1) == y_test).float().mean().item()
        loss = torch.nn.functional.cross_entropy(run.model(x_train), y_train).item()
    assert test_acc == pytest.approx(summary["test_acc"], abs=1e-6)
    assert loss == pytest.approx(summary["train_loss"], rel=1e-5)
    assert run.summary == summary


@pytest.mark.slow
def test_rerunning_a_complete_run_skips_it(relu_run, capsys):
    run_dir, summary = relu_run
    cfg = train_cfg("experiment=use_distance_metrics", "perturbation=none", "trainer.max_epochs=300",
                    "run.checkpoint_every=100", "run.log_every=50")
    mtime = (run_dir / "summary.json").stat().st_mtime_ns
    assert train(cfg, run_dir) == summary
    assert "complete, skipping" in capsys.readouterr().out
    assert (run_dir / "summary.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_a_run_dir_of_another_config_is_refused(relu_run):
    run_dir, _ = relu_run
    cfg = train_cfg("experiment=use_distance_metrics", "perturbation=none", "trainer.max_epochs=300",
                    "optimizer.lr=0.01")
    with pytest.raises(RunDirConflict, match=r"optimizer.lr: 0.001 there, 0.01 now"):
        train(cfg, run_dir)


def test_cli_rejects_an_unknown_arch_listing_the_valid_ones(tmp_path):
    res = run_module("dmlight.train", "arch=mlp3", f"paths.output_dir={tmp_path}")
    assert res.returncode != 0
    assert "arch/mlp3" in res.stderr and "mlp2_neg" in res.stderr and "offset_l2" in res.stderr
    res = run_module("dmlight.train", "activation.name=swish", "data=synthetic", f"paths.output_dir={tmp_path}")
    assert res.returncode != 0
    assert "unknown activation 'swish'; accepted: relu, abs, sigmoid, tanh, gelu, leaky_relu" in res.stderr
    assert res.stderr.count("\n") < 15  # a message, not a traceback wall


def test_cli_missing_mnist_is_a_short_error(tmp_path):
    res = run_module("dmlight.train", "data=mnist", f"data.data_dir={tmp_path}/empty", "data.download=false",
                     f"paths.output_dir={tmp_path}")
    assert res.returncode != 0
    assert "MNIST not found" in res.stderr and "data=mnist5k" in res.stderr
    assert res.stderr.count("\n") < 15


@pytest.mark.slow
def test_multirun_sweep_makes_one_complete_run_dir_per_point(tmp_path):
    res = run_module("dmlight.train", "-m", "data=synthetic", "arch=mlp,mlp2_neg", "activation=relu,abs",
                     "trainer.max_epochs=20", "trainer.accelerator=cpu", "experiment_name=sweep",
                     f"paths.output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    summaries = sorted(tmp_path.glob("sweep/*/*/trainer.max_epochs=20/seed0/summary.json"))
    names = sorted(json.loads(p.read_text())["model_name"] for p in summaries)
    assert names == ["Abs", "Abs2-Neg", "ReLU", "ReLU2-Neg"]
    for p in summaries:
        with open(p.parent / "metrics.csv") as f:
            assert len(list(csv.DictReader(f))) == 20


@pytest.mark.slow
def test_wandb_offline_logs_without_an_account(tmp_path):
    res = run_module("dmlight.train", "data=synthetic", "logger=wandb", "trainer.max_epochs=10",
                     f"hydra.run.dir={tmp_path}/run", env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wandb sync" in res.stdout
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
def test_mini_batches_and_thinned_test_evaluation(tmp_path):
    cfg = train_cfg("data=mnist5k", "data.batch_size=500", "eval_every=4", "trainer.max_epochs=10",
                    "optimizer.lr=0.0005", "logger=csv")
    summary = train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert len(rows) == 10 and all(r["train_acc"] for r in rows)
    assert [int(r["epoch"]) for r in rows if r["test_acc"]] == [4, 8, 10]  # every 4th, and the last
    assert summary["train_acc"] > 0.85  # 80 mini-batch steps learn more than 10 full-batch ones would
    lightning_csv = tmp_path / "csv_logs" / "metrics.csv"
    assert lightning_csv.exists() and "train/loss" in lightning_csv.read_text().splitlines()[0]


@pytest.mark.slow
def test_a_failed_sweep_point_does_not_stop_the_others_and_is_listed(tmp_path):
    # experiment_name is swept too: the sweep dir then differs per job, and failures must still be found.
    res = run_module("dmlight.train", "-m", "data=mnist,synthetic", "experiment_name=a,b", "data.download=false",
                     f"data.data_dir={tmp_path}/no_mnist", "trainer.max_epochs=10", f"paths.output_dir={tmp_path}")
    assert res.returncode == 1
    complete = sorted(str(p.relative_to(tmp_path).parts[:2])
                      for p in tmp_path.glob("*/*/*/trainer.max_epochs=10/seed0/summary.json"))
    assert complete == ["('a', 'synthetic-raw')", "('b', 'synthetic-raw')"]
    assert "2 run(s) of this sweep failed" in res.stderr
    assert res.stderr.count("DataError: MNIST not found") >= 2
    failed = [json.loads(p.read_text()) for p in tmp_path.glob("*/mnist-raw/*/trainer.max_epochs=10/seed0/failed.json")]
    assert [f["error"] for f in failed] == ["DataError", "DataError"]
    assert not list((tmp_path / ".sweeps").iterdir())  # the sweep cleaned up its failure records


def test_trainer_configs_for_cpu_and_gpu():
    assert train_cfg("trainer=cpu").trainer.accelerator == "cpu"
    gpu = train_cfg("trainer=gpu", "trainer.accelerator=gpu").trainer
    assert (gpu.accelerator, gpu.devices) == ("gpu", 1)
    # Data parallelism buys nothing for ~100k-parameter models: dmlight scales out by runs (README).
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="ddp"):
        train_cfg("trainer=ddp")


def test_shuffle_seed_is_part_of_a_mini_batch_runs_identity_only():
    from dmlight.runs.layout import identity

    full, mini = train_cfg(), train_cfg("data.batch_size=100")
    assert identity(full)["data.shuffle_seed"] is None  # full-batch run dirs made before the key existed still match
    assert identity(mini)["data.shuffle_seed"] == 0
    assert identity(train_cfg("data.batch_size=100", "data.shuffle_seed=3")) != identity(mini)


@pytest.mark.slow
def test_callbacks_and_loggers_come_from_the_config(tmp_path):
    """conf/callbacks and conf/logger entries are built with hydra.utils.instantiate; a user adds one
    on the command line, and a ??? key dmlight cannot fill is a config error naming it."""
    from omegaconf import OmegaConf

    from dmlight.tracking.loggers import instantiate_group
    from dmlight.errors import ConfigError
    from dmlight.train import make_callbacks

    cfg = train_cfg("data=synthetic", "trainer.max_epochs=3", "seed=7", "logger=csv",
                    "+callbacks.timer._target_=pytorch_lightning.callbacks.Timer")
    assert [type(c).__name__ for c in make_callbacks(cfg, [tmp_path], "ReLU")] == \
        ["RunRecorder", "PerturbationSweep", "Timer"]
    assert train(cfg, tmp_path)["status"] == "complete"
    hparams = OmegaConf.load(tmp_path / "csv_logs" / "hparams.yaml")  # the run's config, as hyperparameters
    assert (hparams.seed, hparams.data.name, hparams.trainer.max_epochs) == (7, "synthetic", 3)
    assert len(read_metrics(tmp_path / "csv_logs")) >= 1
    spec = OmegaConf.create({"mine": {"_target_": "pytorch_lightning.callbacks.Timer", "duration": "???"}})
    with pytest.raises(ConfigError, match=r"callbacks.mine: duration must be set"):
        instantiate_group(spec, "callbacks", run_dirs=[tmp_path])
