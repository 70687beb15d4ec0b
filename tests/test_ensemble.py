"""Seed ensembles: one stacked model, members indistinguishable from solo runs."""
import json

import pytest
import pytorch_lightning as pl
import torch

import dmlight
from dmlight import train as train_mod
from dmlight.module import Ensemble, join_checkpoints, split_checkpoint
from dmlight.runs import identity, read_metrics
from dmlight.train import build_network, expand_seed_ranges, member_dir, train
from tests.conftest import train_cfg

COMMON = ["experiment=learn_distance_metrics", "trainer.max_epochs=150", "run.checkpoint_every=50",
          "run.log_every=25"]


@pytest.fixture(scope="module")
def ensemble_and_solos(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    ens = train(train_cfg(*COMMON, "seeds=[0,1,2]", f"paths.output_dir={out}/ens"), out / "ens_job")
    solos = [train(train_cfg(*COMMON, f"seed={s}", f"paths.output_dir={out}/solo"),
                   member_dir(train_cfg(*COMMON, f"seed={s}", f"paths.output_dir={out}/solo"), s))
             for s in range(3)]
    return out, ens, solos


def test_members_start_from_their_solo_initial_weights():
    cfg = train_cfg("arch=mlp2_neg")
    ens = Ensemble([build_network(cfg, seed=s) for s in (4, 7)])
    for i, seed in enumerate((4, 7)):
        solo = build_network(cfg, seed=seed).state_dict()
        member = ens.member(i).state_dict()
        assert solo.keys() == member.keys()
        assert all(torch.equal(solo[k], member[k]) for k in solo)
    x = torch.rand(6, 784) * 255
    assert torch.allclose(ens(x)[1], build_network(cfg, seed=7)(x), atol=1e-5)


def test_three_member_ensemble_equals_three_solo_runs(ensemble_and_solos):
    _, ens, solos = ensemble_and_solos
    assert [s["seed"] for s in ens] == [0, 1, 2]
    for e, s in zip(ens, solos):
        # Accuracies come out identical. The loss differs in the last digits: the ensemble's
        # first Linear is one wider matrix product, which sums in another order than the solo's.
        assert e["train_acc"] == s["train_acc"] and e["test_acc"] == s["test_acc"]
        assert e["train_loss"] == pytest.approx(s["train_loss"], rel=1e-4)
        assert e["units"] == s["units"]
    assert len({round(e["train_loss"], 6) for e in ens}) == 3  # the members really differ


def test_member_directories_look_like_solo_runs(ensemble_and_solos):
    out, ens, solos = ensemble_and_solos
    for seed, (e, s) in enumerate(zip(ens, solos)):
        e_dir = out / "ens" / "learn_distance_metrics" / "mnist5k-raw" / "ReLU" / f"seed{seed}"
        s_dir = out / "solo" / "learn_distance_metrics" / "mnist5k-raw" / "ReLU" / f"seed{seed}"
        names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.name != ".lock")  # noqa: E731
        assert names(e_dir) == names(s_dir)
        assert json.loads((e_dir / "summary.json").read_text())["seed"] == seed
        assert len(read_metrics(e_dir)) == 150
        from omegaconf import OmegaConf
        assert identity(OmegaConf.load(e_dir / "config.yaml")) == identity(OmegaConf.load(s_dir / "config.yaml"))
        run = dmlight.load_run(e_dir)
        _, _, x_test, y_test = run.data()
        with torch.no_grad():
            assert (run.model(x_test).argmax(1) == y_test).float().mean().item() == pytest.approx(e["test_acc"])


def test_a_solo_rerun_of_a_member_is_skipped_as_complete(ensemble_and_solos, capsys):
    out, ens, _ = ensemble_and_solos
    cfg = train_cfg(*COMMON, "seed=1", f"paths.output_dir={out}/ens")
    assert train(cfg, member_dir(cfg, 1)) == ens[1]
    assert "complete, skipping" in capsys.readouterr().out


class Crash(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch + 1 == 70:
            raise RuntimeError("simulated crash")


def test_a_crashed_ensemble_resumes_to_the_same_numbers(ensemble_and_solos, tmp_path, monkeypatch):
    _, ens, _ = ensemble_and_solos
    cfg = train_cfg(*COMMON, "seeds=[0,1,2]", f"paths.output_dir={tmp_path}")
    original = train_mod.make_callbacks
    monkeypatch.setattr(train_mod, "make_callbacks", lambda *a: original(*a) + [Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "job")
    assert not any(member_dir(cfg, s).joinpath("summary.json").exists() for s in range(3))
    monkeypatch.setattr(train_mod, "make_callbacks", original)
    resumed = train(cfg, tmp_path / "job")
    for r, e in zip(resumed, ens):
        assert (r["train_loss"], r["train_acc"], r["test_acc"]) == (e["train_loss"], e["train_acc"], e["test_acc"])
    assert [int(r["epoch"]) for r in read_metrics(member_dir(cfg, 2))] == list(range(1, 151))


def test_checkpoint_split_and_join_are_inverses():
    cfg = train_cfg()
    ens = Ensemble([build_network(cfg, seed=s) for s in range(3)])
    state = {"epoch": 4, "state_dict": {f"net.{k}": v for k, v in ens.state_dict().items()},
             "optimizer_states": [{"param_groups": [{"lr": 0.1, "params": [0, 1]}],
                                   "state": {0: {"momentum_buffer": torch.arange(6.0).view(3, 2)}}}]}
    members = split_checkpoint(state, 3)
    assert members[1]["state_dict"]["net.hidden.weight"].shape == (128, 784)
    assert members[2]["optimizer_states"][0]["state"][0]["momentum_buffer"].tolist() == [4.0, 5.0]
    joined = join_checkpoints(members)
    assert joined["state_dict"].keys() == state["state_dict"].keys()
    assert all(torch.equal(joined["state_dict"][k], v) for k, v in state["state_dict"].items())
    assert torch.equal(joined["optimizer_states"][0]["state"][0]["momentum_buffer"],
                       state["optimizer_states"][0]["state"][0]["momentum_buffer"])


def test_seed_ranges_become_lists_for_hydra():
    assert expand_seed_ranges(["seeds=range(3)", "seeds=range(2, 4)", "seed=range(3)", "+seeds=range(1)"]) == [
        "seeds=[0,1,2]", "seeds=[2,3]", "seed=range(3)", "+seeds=[0]"]


def test_per_epoch_member_accuracies_equal_torchmetrics_per_member():
    """The per-epoch path scores all members in one op; it must count what torchmetrics counts."""
    from dmlight.module import accuracy, member_accuracies

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 257, 10, generator=g)
    logits[1, :50] = 0.0  # all-equal rows: ties go to the first class in both
    y = torch.randint(0, 10, (257,), generator=g)
    got = member_accuracies(logits, y)
    want = torch.stack([accuracy(m, y) for m in logits])
    assert got.shape == (4,) and torch.equal(got, want)
    assert 0.0 < got.min() and got.max() < 0.5  # random logits: near 10%, not a degenerate 0 or 1
