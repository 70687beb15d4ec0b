"""What a W&B dashboard would show, read back from the offline runs with wandb's own reader of a run's
transaction log (`wandb leet inspect --json <run>.wandb`), against the run's own files. No account, no network."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dmlight.tracking.loggers import member_loggers
from dmlight.tracking.wandb_log import SCORECARD, STEP, accuracy_key, log_sweep, magnitude_key
from tests.conftest import REPO, run_module, train_cfg

SEEDS = (0, 1, 2)
OVERRIDES = ("experiment=use_distance_metrics", "data=synthetic", "trainer.max_epochs=6", "eval_every=2",
             "run.log_every=2", "run.checkpoint_every=3", "logger=wandb", "logger.wandb.mode=offline")
NOISE = ("_runtime", "_timestamp")  # wall-clock times, different in every run


def read_run(folder: Path) -> dict:
    """The one offline W&B run under `folder`/wandb: its run record, merged config and summary, history rows,
    metric definitions and files folder, as `wandb leet inspect --json` prints them."""
    logs = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(logs[0])],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    run = next(r["run"] for r in records if r["type"] == "run")
    config, summary = dict(run.get("config", {}).get("update", {})), {}
    for r in records:
        config.update(r.get("config", {}).get("update", {}))
        summary.update(r.get("summary", {}).get("update", {}))
    config.pop("_wandb", None)
    history = [{k: v for k, v in r["history"]["item"].items() if k not in NOISE and "artifact_path" not in k}
               for r in records if r["type"] == "history"]
    metrics = {m["metric"].get("name") or m["metric"]["glob_name"]: m["metric"] for m in records if m["type"] == "metric"}
    return {"run": run, "config": config, "summary": summary, "history": history, "metrics": metrics,
            "files": logs[0].parent / "files"}


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def wandb_runs(tmp_path_factory):
    """Seeds 0-2 trained solo and as one ensemble (USE settings, synthetic data, 6 epochs, perturbation
    sweep), logged to W&B offline, and the report of the solo runs logged to its own W&B run."""
    from dmlight.report import build_report
    from dmlight.train import train

    root = tmp_path_factory.mktemp("wandb_runs")
    for seed in SEEDS:
        train(train_cfg(*OVERRIDES, f"seed={seed}"), root / "solo" / f"seed{seed}")
    train(train_cfg(*OVERRIDES, f"seeds=[{','.join(map(str, SEEDS))}]"), root / "ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        report = build_report([root / "solo"], wandb=True)
    return root, report


@pytest.fixture(scope="module")
def solo(wandb_runs):
    return {s: read_run(wandb_runs[0] / "solo" / f"seed{s}") for s in SEEDS}


@pytest.fixture(scope="module")
def ensemble(wandb_runs):
    return {s: read_run(wandb_runs[0] / "ensemble" / f"seed{s}") for s in SEEDS}


@pytest.mark.slow
def test_config_name_group_tags_and_job_type(solo):
    for seed, w in solo.items():
        run, cfg = w["run"], w["config"]
        assert run["display_name"] == f"ReLU_Bias-seed{seed}"
        assert (run["project"], run["run_group"], run["job_type"]) == ("dmlight", "use_distance_metrics", "train")
        assert run["tags"] == ["arch=mlp", "activation=relu", f"seed={seed}", "data=synthetic", "head_bias=True"]
        assert (cfg["arch"]["name"], cfg["activation"]["name"], cfg["seed"], cfg["data"]["name"],
                cfg["data"]["preprocess"], cfg["trainer"]["max_epochs"]) == ("mlp", "relu", seed, "synthetic", "raw", 6)
        assert cfg["model_name"] == "ReLU_Bias" and cfg["seeds"] is None  # what the dashboard groups by
        assert cfg["provenance"]["dmlight"] == "0.1.0"


@pytest.mark.slow
def test_learning_curves_equal_metrics_csv(wandb_runs, solo):
    for seed, w in solo.items():
        by_step = {row[STEP]: row for row in w["history"] if STEP in row and "train/loss" in row}
        rows = csv_rows(wandb_runs[0] / "solo" / f"seed{seed}" / "metrics.csv")
        assert sorted(by_step) == [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
        for r in rows:
            logged = by_step[int(r["epoch"])]
            assert logged["train/loss"] == float(r["train_loss"]) and logged["train/acc"] == float(r["train_acc"])
            assert logged.get("test/acc") == (float(r["test_acc"]) if r["test_acc"] else None)  # eval_every=2
        assert [int(r["epoch"]) for r in rows if r["test_acc"]] == [2, 4, 6]
        assert w["metrics"]["*"]["step_metric"] == STEP  # the epoch is every learning curve's x axis


@pytest.mark.slow
def test_an_ensemble_of_3_is_3_runs_equal_to_the_solo_runs(wandb_runs, solo, ensemble):
    assert len(list((wandb_runs[0] / "ensemble").glob("**/offline-run-*"))) == 3  # one per seed, none for the ensemble
    for seed in SEEDS:
        a, b = solo[seed], ensemble[seed]
        for key in ("display_name", "project", "run_group", "job_type", "tags"):
            assert a["run"][key] == b["run"][key], key
        assert a["config"] == b["config"]
        assert len(a["history"]) == len(b["history"]) > 6 and a["history"] == b["history"]
        assert a["metrics"] == b["metrics"]
        assert not any("seed" in k for row in b["history"] for k in row)  # no seed<s>/ prefixes
    assert solo[0]["history"] != solo[1]["history"]


@pytest.mark.slow
def test_perturbation_keys_and_values_equal_perturbation_csv(wandb_runs, solo):
    for seed, w in solo.items():
        rows = csv_rows(wandb_runs[0] / "solo" / f"seed{seed}" / "perturbation.csv")
        expected = {(r["kind"], float(r["magnitude"]), r["split"], float(r["accuracy"]))
                    for r in rows if r["kind"] != "baseline"}
        logged = set()
        for row in w["history"]:
            for kind in ("scale", "clip", "offset"):
                if magnitude_key(kind) in row:
                    logged.add((kind, row[magnitude_key(kind)], "train", row[accuracy_key(kind, "train")]))
        assert len(expected) == 325 and logged == expected
        for kind in ("scale", "clip", "offset"):  # the magnitude is the x axis of its kind's accuracy
            assert w["metrics"][accuracy_key(kind, "train")]["step_metric"] == magnitude_key(kind)
            table = json.loads((w["files"] / w["summary"][f"perturbation/{kind}_rows.path"]).read_text())
            assert table["columns"] == ["kind", "magnitude", "split", "unit", "accuracy"]
            assert [[str(v) for v in r] for r in table["data"]] == [
                [r["kind"], r["magnitude"], r["split"], r["unit"], r["accuracy"]] for r in rows if r["kind"] == kind]
        baseline = next(r for r in rows if r["kind"] == "baseline")
        assert w["summary"]["perturbation/baseline_train"] == float(baseline["accuracy"])


@pytest.mark.slow
def test_the_report_runs_scorecard_table_equals_scorecard_csv(wandb_runs):
    report = wandb_runs[1]
    w = read_run(report)
    assert (w["run"]["job_type"], w["run"]["run_group"]) == ("report", "use_distance_metrics")
    table = json.loads((w["files"] / w["summary"][f"{SCORECARD}.path"]).read_text())
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    text = (report / "scorecard.csv").read_text()
    assert len(frame) == 10 and frame.to_csv(index=False) == text
    statuses = {f"claim/{r['paper']}-{r['claim_id']}": r["status"] for r in csv_rows(report / "scorecard.csv")}
    assert {k: w["summary"][k] for k in statuses} == statuses


@pytest.mark.slow
def test_the_dashboard_spec_offline_shows_the_runs_keys(wandb_runs, solo, tmp_path):
    (tmp_path / "netrc").write_text("")
    env = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc"), "WANDB_MODE": ""}
    res = run_module("dmlight.dashboard", "--project", "dmlight", "--experiment", "use_distance_metrics",
                     "--out", str(tmp_path / "dash.json"), env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no W&B account or network" in res.stdout and "wandb login" in res.stdout
    dash = json.loads((tmp_path / "dash.json").read_text())
    assert (dash["project"], dash["groupby"]) == ("dmlight", ["Config('model_name')"])
    assert "use_distance_metrics" in dash["filters"] and "report" in dash["filters"]
    sections = dash["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == ["Learning curves", "USE: accuracy under perturbation (training set)",
                                              "LEARN: test accuracy by model", "Report", "Beyond the papers"]
    drawn = [(p["viewType"], p["config"].get("xAxis"), p["config"].get("metrics"), p["config"].get("groupArea"))
             for s in sections for p in s["panels"]]
    assert drawn[:7] == [
        ("Run History Line Plot", "trainer/global_step", ["train/loss"], "minmax"),
        ("Run History Line Plot", "trainer/global_step", ["train/acc"], "minmax"),
        ("Run History Line Plot", "trainer/global_step", ["test/acc"], "minmax"),
        ("Run History Line Plot", "perturbation/scale/magnitude", ["perturbation/scale/train"], "minmax"),
        ("Run History Line Plot", "perturbation/clip/magnitude", ["perturbation/clip/train"], "minmax"),
        ("Run History Line Plot", "perturbation/offset/magnitude", ["perturbation/offset/train"], "minmax"),
        ("Bar Chart", None, ["test/acc"], "stddev")]
    assert drawn[7][0] == "Weave" and f'"val": "{SCORECARD}"' in json.dumps(sections[3]["panels"][0])
    assert drawn[8][0] == "Weave" and '"val": "table/study"' in json.dumps(sections[4]["panels"][0])
    assert dash["spec"]["section"]["runSets"][0]["grouping"] == [{"section": "config", "name": "model_name.value"}]
    # every key a panel draws is one the runs logged
    keys = set().union(*solo[0]["history"])
    for _, x, ys, _ in drawn[:6]:
        assert {x, *ys} <= keys
    assert "test/acc" in solo[0]["summary"]


@pytest.mark.slow
def test_make_wandb_sync_finds_every_offline_run(wandb_runs, tmp_path):
    res = subprocess.run(["make", "-s", "wandb-sync", f"RUNS={wandb_runs[0]}", f"PY={sys.executable}", "SYNC_ARGS=--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                     "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "Would sync 7 run(s)" in out  # 3 solo, 3 ensemble members, the report
    assert out.count("/ensemble/seed") == 3 and out.count("/report/wandb/") == 1


def test_loggers_belong_to_the_run_whose_directory_they_write(tmp_path):
    class Logger:
        def __init__(self, save_dir):
            self.save_dir = save_dir

    a, b, elsewhere = Logger(str(tmp_path / "seed0")), Logger(tmp_path / "seed1"), Logger("/somewhere")
    own, shared = member_loggers([a, b, elsewhere], [tmp_path / "seed0", tmp_path / "seed1"])
    assert own == [[a], [b]] and shared == [elsewhere]
    assert member_loggers([a, elsewhere], [tmp_path / "seed0"]) == ([[a, elsewhere]], [])  # a solo run owns all


def test_log_sweep_gives_each_kind_its_magnitude_axis_and_a_table():
    class Run:
        def __init__(self):
            self.defined, self.logged = {}, []

        def define_metric(self, name, **options):
            self.defined[name] = options

        def log(self, row):
            self.logged.append(row)

    class Logger:  # a Lightning logger wrapping a run, like WandbLogger
        def __init__(self, experiment):
            self.experiment = experiment

    rows = [{"kind": "baseline", "magnitude": None, "split": s, "unit": "all", "accuracy": a}
            for s, a in (("train", 0.99), ("test", 0.95))]
    rows += [{"kind": "offset", "magnitude": p, "split": s, "unit": "all", "accuracy": a}
             for s in ("train", "test") for p, a in ((-0.1, 0.5), (0.1, 0.6))]
    rows += [{"kind": "clamp_min", "magnitude": 0.2, "split": "train", "unit": 5, "accuracy": 0.7}]
    run = Run()
    log_sweep([Logger(run), Logger(object())], rows)  # the second has no W&B run: skipped
    assert run.logged[:3] == [
        {"perturbation/offset/magnitude": -0.1, "perturbation/offset/train": 0.5, "perturbation/offset/test": 0.5},
        {"perturbation/offset/magnitude": 0.1, "perturbation/offset/train": 0.6, "perturbation/offset/test": 0.6},
        {"perturbation/clamp_min_unit5/magnitude": 0.2, "perturbation/clamp_min_unit5/train": 0.7}]
    assert run.defined["perturbation/offset/test"]["step_metric"] == "perturbation/offset/magnitude"
    last = run.logged[3]
    assert (last["perturbation/baseline_train"], last["perturbation/baseline_test"]) == (0.99, 0.95)
    assert len(last["perturbation/offset_rows"].data) == 4 and len(last["perturbation/clamp_min_unit5_rows"].data) == 1


@pytest.mark.slow
def test_a_diverged_members_run_stops_at_its_divergence_epoch(tmp_path):
    from dmlight.train import train

    # LEARN's ReLU at lr 1000 on the digits: seed 3 overflows at epoch 5, seed 4 trains on (tests/training/test_diverge.py).
    out = train(train_cfg("experiment=learn_distance_metrics", "optimizer.lr=1000", "trainer.max_epochs=12",
                          "run.log_every=4", "logger=wandb", "logger.wandb.mode=offline", "seeds=[3,4]"), tmp_path)
    assert [s["status"] for s in out] == ["diverged", "complete"]
    for seed, epochs in ((3, 5), (4, 12)):
        w = read_run(tmp_path / f"seed{seed}")
        steps = [row[STEP] for row in w["history"] if "train/loss" in row]
        assert steps == list(range(1, epochs + 1)) and w["run"]["display_name"] == f"ReLU-seed{seed}"


# ---- W&B's own idea of "logged in": each case in a fresh process with a fake HOME (W&B reads its settings once).

KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, the form of a W&B API key; never sent anywhere


def _custom_host(home: Path) -> dict:
    """What `wandb login --host https://wandb.example.org` leaves: the host in W&B's settings, the key in netrc."""
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    (home / ".netrc").write_text(f"machine wandb.example.org\n  login user\n  password {KEY}\n")
    (home / ".netrc").chmod(0o600)
    return {}


def _settings_key(home: Path) -> dict:
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text(f"[default]\napi_key = {KEY}\n")
    return {}


def _token_file(home: Path) -> dict:
    (home / "token").write_text("a-federated-identity-token\n")
    return {"WANDB_IDENTITY_TOKEN_FILE": str(home / "token")}


def _another_hosts_key(home: Path) -> dict:
    """A netrc key for the default host, but W&B is set to another server: W&B would not use it."""
    _custom_host(home)
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    return {}


@pytest.mark.parametrize("setup, extra, want", [
    (lambda home: {}, {}, "offline"),
    (_custom_host, {}, "online"),
    (_settings_key, {}, "online"),
    (_token_file, {}, "online"),
    (_another_hosts_key, {}, "offline"),
    (_custom_host, {"WANDB_MODE": "disabled"}, "disabled"),
    (lambda home: {}, {"WANDB_MODE": "online"}, "online"),  # the explicit override comes first
    (lambda home: {}, {"WANDB_MODE": ""}, "offline"),        # set but empty: as unset (W&B itself refuses "")
])
def test_wandb_mode_asks_wandb_for_credentials(tmp_path, setup, extra, want):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update({"HOME": str(home), **setup(home), **extra})
    before = sorted(str(p) for p in home.rglob("*"))
    code = ("from pathlib import Path; from dmlight.config import compose_config; "
            "from dmlight.tracking.loggers import offline_hint; cfg = compose_config(['logger=wandb']); "
            "print(cfg.logger.wandb.mode); offline_hint(cfg, [Path('runs/seed3')], 'ReLU')")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == want
    hint = "[ReLU] wandb offline (no account or network): sync later with `wandb sync runs/seed3/wandb/offline-run-*`"
    assert lines[1:] == ([hint] if want == "offline" else [])
    assert sorted(str(p) for p in home.rglob("*")) == before  # asking wrote nothing, prompted for nothing


# ---- One W&B run per seed across a crash.

def read_attempts(run_dir: Path) -> list[dict]:
    """Every offline W&B run folder of `run_dir`, oldest first, read with W&B's own reader (`wandb leet inspect`)."""
    out = []
    for log in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime_ns):
        text = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                              capture_output=True, text=True, timeout=120, check=True).stdout
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        run = next(r["run"] for r in records if r["type"] == "run")
        summary = {}
        for r in records:
            summary.update(r.get("summary", {}).get("update", {}))
        history = [{k: v for k, v in r["history"]["item"].items() if k not in NOISE}
                   for r in records if r["type"] == "history"]
        out.append({"id": run["run_id"], "history": history, "summary": summary})
    return out


@pytest.mark.slow
def test_a_run_killed_and_rerun_continues_its_wandb_run(tmp_path, monkeypatch):
    from tests.conftest import kill_after_first_checkpoint

    # A W&B run in this process (another test's) exports its service: the killed child's stream would stay open
    # there, as it would in any parent process that runs wandb. A shell has none; neither do these commands.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)

    args = ["experiment=learn_distance_metrics", "data=synthetic", "trainer.max_epochs=400", "run.checkpoint_every=100",
            "run.log_every=10", "run.progress_every=0", "perturbation=none", "seed=7", "logger=wandb",
            "logger.wandb.mode=offline", "trainer.accelerator=cpu"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    res = run_module("dmlight.train", *args, f"hydra.run.dir={whole}", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    kill_after_first_checkpoint(args, killed)
    first = read_attempts(killed)
    assert len(first) == 1 and first[0]["history"], "the killed attempt logged nothing"
    res = run_module("dmlight.train", *args, f"hydra.run.dir={killed}", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]

    attempts, reference = read_attempts(killed), read_attempts(whole)
    assert len(attempts) == 2 and len(reference) == 1
    ids = {a["id"] for a in attempts}
    assert len(ids) == 1  # one W&B run for the seed
    assert ids == {json.loads((killed / "wandb_run.json").read_text())["id"]}  # the id kept in the run directory
    rows = [row for a in attempts for row in a["history"]]
    epochs = [row["trainer/global_step"] for row in rows]
    steps = [row["_step"] for row in rows]
    assert epochs == list(range(1, 401))  # no epoch twice, none missing
    assert steps == sorted(set(steps)) and steps[0] == 0  # W&B's own step goes on across the attempts
    assert attempts[1]["history"][0]["_step"] == attempts[0]["history"][-1]["_step"] + 1
    assert rows == reference[0]["history"]  # what an uninterrupted run logged, row for row
    final = {k: v for k, v in attempts[1]["summary"].items() if "/" in k}
    assert final and final == {k: v for k, v in reference[0]["summary"].items() if "/" in k}


@pytest.mark.slow
def test_a_resumed_run_whose_wandb_run_holds_nothing_gets_every_epoch(tmp_path, monkeypatch):
    """Killed before W&B wrote a row: the rerun backfills epochs 1..3 from metrics.csv, then logs epoch 4."""
    from dmlight.tracking.wandb_logger import ResumableWandbLogger

    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    (tmp_path / "wandb_run.json").write_text('{"id": "abcdef123456"}')
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,train_acc,test_acc\n1,2.5,0.25,\n2,1.5,0.5,0.375\n"
                                          "3,1.25,0.625,\n")
    logger = ResumableWandbLogger(save_dir=str(tmp_path), project="dmlight", mode="offline")
    logger.log_metrics({"train/loss": 1.0, "train/acc": 0.75}, step=4)
    logger.experiment.finish()
    attempt, = read_attempts(tmp_path)
    assert attempt["id"] == "abcdef123456"
    assert [(r["trainer/global_step"], r["train/loss"], r.get("test/acc")) for r in attempt["history"]] == \
        [(1, 2.5, None), (2, 1.5, 0.375), (3, 1.25, None), (4, 1.0, None)]
