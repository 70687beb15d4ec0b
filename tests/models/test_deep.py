"""Deeper MLPs (arch.hidden=[a,b,...]): their layers, the paper nets left as they were, ensembles equal to
solo runs, the probe at any hidden layer, and the errors. Trainings are real: short runs on mnist5k."""
import csv
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dmlight.runs import layout as rundir
from dmlight.runs.files import read_metrics
from dmlight.config import compose_config
from dmlight.errors import ConfigError
from dmlight.models.layers import Abs, Neg, OffsetL2
from dmlight.models.networks import build_model, unit_counts
from dmlight.perturb import perturb
from dmlight.perturbation.formulas import PerturbationError, UnitRanges, perturbation_values
from dmlight.train import build_network, train
from tests.conftest import member_dir
from tests.conftest import perturb_again, run_module, train_cfg
from tests.package.test_cli import HEAVY, imported_modules

MAGNITUDES = [-0.3, 0.05, 0.4, 2.0]  # every USE kind at these points (a few, for a naive reference)
DEEP_USE = ["experiment=use_distance_metrics", "arch.hidden=[64,32]", "trainer.max_epochs=40",
            "run.checkpoint_every=40", "perturbation.layer=hidden2", f"perturbation.magnitudes={MAGNITUDES}"]


@pytest.fixture(scope="module")
def deep_use_run(tmp_path_factory):
    """ReLU_Bias with hidden layers 64 and 32, 40 epochs, USE's kinds probed at hidden2: (run_dir, summary)."""
    run_dir = tmp_path_factory.mktemp("deep_use")
    return run_dir, train(train_cfg(*DEEP_USE), run_dir)


# ---------------------------------------------------------------- the network

def test_a_three_layer_net_has_its_named_layers_and_widths():
    net = build_model("mlp2_neg", "abs", hidden=[64, 32, 16])
    parts = list(net.named_children())
    assert [n for n, _ in parts] == ["hidden", "activation", "hidden2", "activation2", "hidden3", "activation3",
                                     "head", "output_activation", "neg"]
    linears = [(m.in_features, m.out_features) for _, m in parts if isinstance(m, nn.Linear)]
    assert linears == [(784, 64), (64, 32), (32, 16), (16, 10)]
    acts = [m for n, m in parts if n.startswith(("activation", "output_activation"))]
    assert all(isinstance(a, Abs) for a in acts) and len({id(a) for a in acts}) == 4  # one module per use
    assert isinstance(net.neg, Neg) and net.head.bias is None
    assert net.name == "Abs2-Neg_64x32x16" and net.widths == (64, 32, 16)
    assert net(torch.rand(5, 784) * 255).shape == (5, 10)
    counts = unit_counts(net, torch.rand(50, 784) * 255)
    assert {k: c["n"] for k, c in counts.items()} == {"activation": 64, "activation2": 32, "activation3": 16,
                                                      "output_activation": 10}
    l2 = build_model("offset_l2_neg", "relu", hidden=(20, 12))
    assert isinstance(l2.head, OffsetL2) and l2.head.mu.shape == (10, 12) and l2.name == "ReLU-L2-Neg_20x12"
    assert list(l2.activation_layers()) == ["activation", "activation2"]


@pytest.mark.parametrize("arch,head_bias", [("mlp", True), ("mlp2_neg", False), ("offset_l2", False)])
def test_one_hidden_layer_as_a_list_is_the_papers_net_with_its_initial_weights(arch, head_bias):
    """The reference replays what the papers' net always drew: Linear(784, 128), then the head."""
    cfg = train_cfg(f"arch={arch}", f"arch.head_bias={head_bias}")
    torch.manual_seed(5)
    hidden = nn.Linear(784, 128)
    head = nn.Linear(128, 10, bias=head_bias) if arch.startswith("mlp") else OffsetL2(128, 10)
    reference = {**{f"hidden.{k}": v for k, v in hidden.state_dict().items()},
                 **{f"head.{k}": v for k, v in head.state_dict().items()}}
    for spelling in (128, [128], OmegaConf.create([128])):
        net = build_model(arch, "relu", head_bias, hidden=spelling)
        assert net.name == build_model(arch, "relu", head_bias).name  # the paper's name, no widths
        cfg.arch.hidden = spelling
        net = build_network(cfg, seed=5)
        state = net.state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
        assert [type(m) for m in net.children()][:3] == [nn.Linear, nn.ReLU, type(head)]


@pytest.mark.slow
def test_a_one_layer_list_trains_to_the_int_runs_bytes(tmp_path):
    common = ["experiment=use_distance_metrics", "perturbation=none", "trainer.max_epochs=20"]
    runs = {}
    for spelling in ("128", "[128]"):
        run_dir = tmp_path / spelling
        summary = train(train_cfg(*common, f"arch.hidden={spelling}"), run_dir)
        runs[spelling] = run_dir
        assert summary["hidden"] == 128 and summary["model_name"] == "ReLU_Bias"
        assert OmegaConf.load(run_dir / "config.yaml").arch.hidden == 128  # saved in one spelling
    assert (runs["128"] / "metrics.csv").read_bytes() == (runs["[128]"] / "metrics.csv").read_bytes()
    assert len(read_metrics(runs["128"])) == 20


@pytest.mark.slow
def test_a_deeper_ensemble_equals_its_solo_runs_byte_for_byte(tmp_path):
    common = ["experiment=learn_distance_metrics", "activation=abs", "arch.hidden=[64,32]",
              "trainer.max_epochs=30", "run.checkpoint_every=30"]
    ens = train(train_cfg(*common, "seeds=[3,7]", f"paths.output_dir={tmp_path}/ens"))
    for seed, e in zip((3, 7), ens):
        solo_cfg = train_cfg(*common, f"seed={seed}", f"paths.output_dir={tmp_path}/solo")
        s = train(solo_cfg)
        e_dir = member_dir(train_cfg(*common, f"seed={seed}", f"paths.output_dir={tmp_path}/ens"), seed)
        assert e_dir.as_posix().endswith(f"learn_distance_metrics/mnist5k-raw/Abs_64x32/trainer.max_epochs=30/"
                                         f"seed{seed}")
        assert (e_dir / "metrics.csv").read_bytes() == (member_dir(solo_cfg, seed) / "metrics.csv").read_bytes()
        assert {k: e[k] for k in ("train_loss", "test_acc", "units", "hidden")} == \
            {k: s[k] for k in ("train_loss", "test_acc", "units", "hidden")}
        assert e["hidden"] == [64, 32] and e["units"]["activation2"]["train"]["n"] == 32
    assert ens[0]["train_loss"] != ens[1]["train_loss"] and min(e["test_acc"] for e in ens) > 0.5  # really trained


# ---------------------------------------------------------------- where runs go

def test_a_deeper_net_has_its_widths_in_the_model_directory_in_one_spelling():
    assert train_cfg("arch.hidden=[64,32]").run_subdir == "mnist5k-raw/ReLU_64x32/seed0"
    assert train_cfg("arch.hidden=[64, 32]").run_subdir == "mnist5k-raw/ReLU_64x32/seed0"
    assert train_cfg("arch=mlp2_neg", "arch.hidden=[128,128]", "seeds=[3,7]").run_subdir == \
        "mnist5k-raw/ReLU2-Neg_128x128/ensemble-seeds3-7-n2"
    assert train_cfg("arch.hidden=[64]").run_subdir == train_cfg("arch.hidden=64").run_subdir == \
        "mnist5k-raw/ReLU/arch.hidden=64/seed0"
    assert rundir.variant_name(["arch.hidden=[256, 128]", "optimizer.lr=0.01"]) == "optimizer.lr=0.01"


# ---------------------------------------------------------------- errors

BAD_HIDDEN = {"[128,0]": (r"\[128,0\]", "hidden layer 2's width 0 is not a whole number >= 1"),
              "abc": ("'abc'", ""), "[]": (r"\[\]", "an empty list has no hidden layer"), "0": ("0", ""),
              "1.5": ("1.5", ""), "[64,x]": (r"\[64,x\]", "hidden layer 2's width 'x'"), "true": ("True", "")}


@pytest.mark.parametrize("bad,shown,why", [(k, *v) for k, v in BAD_HIDDEN.items()], ids=list(BAD_HIDDEN))
def test_a_bad_hidden_value_is_a_config_error_naming_it(bad, shown, why):
    with pytest.raises(ConfigError, match=rf"arch.hidden={shown}[:;] {why}.*accepted: a whole number >= 1 .* or a "
                                          r"non-empty list of them .*e.g. arch.hidden=128 or arch.hidden=\[128,128\]"):
        compose_config([f"arch.hidden={bad}"])


def test_a_bad_hidden_value_on_the_command_line_answers_before_torch_loads(tmp_path):
    res, names = imported_modules("arch.hidden=[128,0]", f"hydra.run.dir={tmp_path}/run")
    assert "omegaconf" in names and not {m for m in names if m.split(".")[0] in HEAVY}
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error: arch.hidden=[128,0]: hidden layer 2's width 0" in res.stderr


@pytest.mark.slow
def test_probing_a_layer_the_net_lacks_stops_training_before_it_starts(tmp_path):
    run_dir = tmp_path / "run"
    res = run_module("dmlight.train", *DEEP_USE[:3], "perturbation.layer=hidden3", "trainer.accelerator=cpu",
                     f"hydra.run.dir={run_dir}")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "error: perturbation.layer=hidden3 (ReLU_Bias_64x32): " in res.stderr
    assert "its modules: hidden, activation, hidden2, activation2, head." in res.stderr
    assert not (run_dir / "metrics.csv").exists() and (run_dir / "failed.json").exists()


# ---------------------------------------------------------------- the probe at hidden2

@torch.inference_mode()
def reference_rows(net, x, y) -> dict[tuple[str, str], float]:
    """{(kind, magnitude): accuracy} of the whole network with clamp(out * scale + offset, lower, upper) on
    hidden2's output by a hook written here, the unit ranges from activation2's output on these rows."""
    h = net.activation2(net.hidden2(net.activation(net.hidden(x))))
    ranges = UnitRanges(h.amin(0), h.amax(0))
    out = {("baseline", ""): int((net(x).argmax(1) == y).sum()) / len(y)}
    for kind in ("scale", "clip", "offset"):
        for p in MAGNITUDES:
            v = perturbation_values(kind, p, ranges)
            hook = net.hidden2.register_forward_hook(
                lambda m, i, o: torch.clamp(o * v["scale"] + v["offset"], min=v["lower"], max=v["upper"]))
            out[(kind, repr(float(p)))] = int((net(x).argmax(1) == y).sum()) / len(y)
            hook.remove()
    return out, ranges


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_probe_at_hidden2_counts_what_a_hook_on_hidden2_counts(deep_use_run):
    from dmlight.data.datasets import load_data
    from dmlight.runs.load import load_run

    run_dir, summary = deep_use_run
    assert summary["hidden"] == [64, 32] and summary["model_name"] == "ReLU_Bias_64x32"
    assert set(summary["units"]) == {"activation", "activation2"}
    net = load_run(run_dir).model  # rebuilt from the saved config: two hidden layers
    assert net.widths == (64, 32)
    data = load_data("mnist5k")
    want, ranges = reference_rows(net, data.x_train, data.y_train)
    rows = read_csv(run_dir / "perturbation_hidden2.csv")
    assert {(r["kind"], r["magnitude"]): float(r["accuracy"]) for r in rows} == want
    assert {r["epoch"] for r in rows} == {"40"} and len(rows) == 1 + 3 * len(MAGNITUDES)
    assert want[("baseline", "")] == pytest.approx(summary["train_acc"])
    assert len({a for k, a in want.items() if k[0] == "offset"}) > 1  # the points really perturb
    written = read_csv(run_dir / "unit_ranges_hidden2.csv")
    assert [float(r["min"]) for r in written] == ranges.min.tolist()
    assert [float(r["max"]) for r in written] == ranges.max.tolist() and len(written) == 32
    assert not (run_dir / "perturbation.csv").exists()  # the hidden layer's file stays the papers' alone


@pytest.mark.slow
def test_dmlight_perturb_probes_hidden2_of_a_saved_run(deep_use_run, tmp_path):
    run_dir, _ = deep_use_run
    copy = perturb_again(run_dir, tmp_path, "perturbation_hidden2.csv", "perturbation=use",
                         "perturbation.layer=hidden2", f"perturbation.magnitudes={MAGNITUDES}")
    assert (copy / "unit_ranges_hidden2.csv").read_text() == (run_dir / "unit_ranges_hidden2.csv").read_text()
    assert not (copy / "perturbation.csv").exists()
    use = compose_config(["perturbation=use", f"perturbation.magnitudes={MAGNITUDES}"]).perturbation
    with pytest.raises(PerturbationError, match=r"perturbation.layer=hidden3: .*its modules: hidden, activation, "
                                                r"hidden2, activation2, head"):
        perturb(copy, OmegaConf.merge(use, {"layer": "hidden3"}), log=None)
    # unit 40 is one of hidden's 64 units, not of hidden2's 32
    with pytest.raises(PerturbationError, match=r"unit=40 .*accepted: 0..31"):
        perturb(copy, OmegaConf.merge(use, {"layer": "hidden2", "unit": 40}), log=None)


@pytest.mark.slow
def test_the_report_reads_a_deeper_run_beside_paper_runs(deep_use_run, tmp_path):
    from dmlight.report import build_report, load_runs
    from tests.report.report_fixtures import make_run

    run_dir, summary = deep_use_run
    root = tmp_path / "runs"
    shutil.copytree(run_dir, root / "deep")
    make_run(root, "use_distance_metrics", "ReLU_Bias", 0, test_acc=0.9)
    make_run(root, "use_distance_metrics", "ReLU_Bias", 1, test_acc=0.9, hidden=[128, 64])  # a group mixing them
    data = load_runs([root])
    assert sorted(data.runs.model) == ["ReLU_Bias", "ReLU_Bias", "ReLU_Bias_64x32"]
    assert sorted(data.units[data.units.model == "ReLU_Bias_64x32"].layer.unique()) == ["activation", "activation2"]
    out = build_report([root])
    report = (out / "report.md").read_text()
    assert "ReLU_Bias [use_distance_metrics] mixes variants" in report and "hidden=[128, 64]" in report
    assert json.loads((root / "deep" / "summary.json").read_text())["hidden"] == [64, 32]
