"""Seed ensembles: one stacked model, members indistinguishable from solo runs."""
import json

import pytest
import pytorch_lightning as pl
import torch

import dmlight
from dmlight import train as train_mod
from dmlight.training.checkpoints import join_checkpoints, split_checkpoint
from dmlight.training.module import Ensemble
from dmlight.runs.layout import identity
from dmlight.runs.files import read_metrics
from dmlight.train import build_network, expand_seed_ranges, train
from tests.conftest import member_dir
from tests.conftest import train_cfg

COMMON = ["experiment=learn_distance_metrics", "trainer.max_epochs=150", "run.checkpoint_every=50",
          "run.log_every=25"]


@pytest.fixture(scope="module")
def ensemble_and_solos(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    # Groups of two (members 0,1 then 2): the CPU path that gathers gradients from groups.
    ens = train(train_cfg(*COMMON, "seeds=[0,1,2]", "run.member_group=2", f"paths.output_dir={out}/ens"))
    solos = [train(train_cfg(*COMMON, f"seed={s}", f"paths.output_dir={out}/solo")) for s in range(3)]
    return out, ens, solos


def run_dirs(out, seed):
    """(ensemble member's, solo run's) directory: the same path under the two output dirs."""
    tail = ("learn_distance_metrics", "mnist5k-raw", "ReLU", "trainer.max_epochs=150", f"seed{seed}")
    return out.joinpath("ens", *tail), out.joinpath("solo", *tail)


def test_members_start_from_their_solo_initial_weights():
    cfg = train_cfg("arch=mlp2_neg")
    ens = Ensemble([build_network(cfg, seed=s) for s in (4, 7)])
    for i, seed in enumerate((4, 7)):
        solo = build_network(cfg, seed=seed).state_dict()
        member = ens.member(i).state_dict()
        assert solo.keys() == member.keys()
        assert all(torch.equal(solo[k], member[k]) for k in solo)
    x = torch.rand(6, 784) * 255
    assert torch.equal(ens(x)[1], build_network(cfg, seed=7)(x))


@pytest.mark.slow
def test_three_member_ensemble_equals_three_solo_runs(ensemble_and_solos):
    out, ens, solos = ensemble_and_solos
    assert [s["seed"] for s in ens] == [0, 1, 2]
    for seed, (e, s) in enumerate(zip(ens, solos)):
        # Bit for bit, every epoch: the stacked ops make each member's very calls a solo run makes.
        e_dir, s_dir = run_dirs(out, seed)
        assert (e_dir / "metrics.csv").read_bytes() == (s_dir / "metrics.csv").read_bytes()
        assert {k: e[k] for k in ("train_loss", "train_acc", "test_acc", "units")} == \
            {k: s[k] for k in ("train_loss", "train_acc", "test_acc", "units")}
        assert e["ensemble_size"] == 3 and s["ensemble_size"] == 1
    assert len({e["train_loss"] for e in ens}) == 3  # the members really differ
    assert 0.5 < min(e["test_acc"] for e in ens)  # and really trained


PAPER_MODELS = [("mlp", False), ("mlp", True), ("mlp2", False), ("mlp2", True), ("mlp2_neg", False),
                ("mlp2_neg", True), ("offset_l2", False), ("offset_l2_neg", False)]


@pytest.mark.slow
@pytest.mark.parametrize("arch,head_bias", PAPER_MODELS)
def test_every_model_trains_bit_identically_as_an_ensemble_member(arch, head_bias):
    """Three SGD steps, in one group and in groups of one, for every activation and site:
    logits, losses and gradients of each member equal its own network's, bit for bit."""
    from dmlight.data.datasets import load_data
    from dmlight.training.module import DistanceModule

    data = load_data("mnist5k")
    x, y = data.x_train[:300], data.y_train[:300]
    for activation in ("relu", "abs", "sigmoid", "tanh", "gelu", "leaky_relu"):
        for site in ("pre_activation", "post_activation"):
            cfg = train_cfg(f"arch={arch}", f"activation={activation}", f"arch.head_bias={head_bias}",
                            f"arch.site={site}")
            solos = [build_network(cfg, seed=s) for s in range(3)]
            for size in (3, 1):
                ens = Ensemble([build_network(cfg, seed=s) for s in range(3)])
                nets = [build_network(cfg, seed=s) for s in range(3)]
                for _ in range(3):
                    groups = ens.groups(size)
                    parts = [ens(x)] if groups is None else [ens(x, params=g) for g in groups]
                    losses = [DistanceModule._losses(logits, y) for logits in parts]
                    for part in losses:
                        part.sum().backward()
                    if groups is not None:
                        ens.gather_grads(groups)
                    logits, losses = torch.cat(parts), torch.cat(losses)
                    for m, net in enumerate(nets):
                        net.zero_grad()
                        out = net(x)
                        loss = torch.nn.functional.cross_entropy(out, y)
                        loss.backward()
                        assert torch.equal(out, logits[m]) and torch.equal(loss, losses[m]), (activation, site, m)
                        for name, p in net.named_parameters():
                            assert torch.equal(p.grad, ens.stacked()[name].grad[m]), (activation, site, name)
                    with torch.no_grad():  # one plain SGD step on both sides
                        for p in [*ens.parameters(), *(q for n in nets for q in n.parameters())]:
                            p -= 1e-3 * p.grad
                            p.grad = None
            del solos


def test_member_groups_fit_the_cpu_cache_and_take_everything_on_a_gpu():
    from dmlight.training.module import auto_member_group

    twenty = Ensemble([build_network(train_cfg(), seed=s) for s in range(20)])
    assert auto_member_group(twenty, 4000, "cpu") == 4  # 4 x (4000 x 128 floats) = 8 MB
    assert auto_member_group(twenty, 60000, "cpu") == 1  # full MNIST: one member already fills it
    assert auto_member_group(twenty, 4000, "cuda:1") == 20
    l2 = Ensemble([build_network(train_cfg("arch=offset_l2"), seed=s) for s in range(3)])
    assert auto_member_group(l2, 4000, "cpu") == 3  # its rows x 10 x 128 terms stay inside its row blocks
    assert auto_member_group(build_network(train_cfg()), 4000, "cpu") == 1


@pytest.mark.parametrize("bad", [0, -2, "two"])
def test_a_bad_member_group_is_a_config_error_naming_it(bad):
    from dmlight.data.datasets import load_data
    from dmlight.errors import ConfigError
    from dmlight.training.module import DistanceModule

    with pytest.raises(ConfigError, match=f"run.member_group={bad!r}.*whole number >= 1"):
        DistanceModule(Ensemble([build_network(train_cfg(), seed=s) for s in range(2)]), load_data("synthetic"),
                       lambda params: torch.optim.SGD(params, lr=0.1), member_group=bad)


@pytest.mark.slow
def test_member_directories_look_like_solo_runs(ensemble_and_solos):
    out, ens, solos = ensemble_and_solos
    for seed, (e, s) in enumerate(zip(ens, solos)):
        e_dir, s_dir = run_dirs(out, seed)
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


@pytest.mark.slow
def test_a_solo_rerun_of_a_member_is_skipped_as_complete(ensemble_and_solos, capsys):
    out, ens, _ = ensemble_and_solos
    cfg = train_cfg(*COMMON, "seed=1", f"paths.output_dir={out}/ens")
    assert train(cfg, member_dir(cfg, 1)) == ens[1]
    assert "complete, skipping" in capsys.readouterr().out


class Crash(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch + 1 == 70:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_a_crashed_ensemble_resumes_to_the_same_numbers(ensemble_and_solos, tmp_path, monkeypatch):
    _, ens, _ = ensemble_and_solos
    cfg = train_cfg(*COMMON, "seeds=[0,1,2]", f"paths.output_dir={tmp_path}")
    original = train_mod.make_callbacks
    monkeypatch.setattr(train_mod, "make_callbacks", lambda *a: original(*a) + [Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    assert not any(member_dir(cfg, s).joinpath("summary.json").exists() for s in range(3))
    # the crash is recorded in each member's own directory
    assert [json.loads(member_dir(cfg, s).joinpath("failed.json").read_text())["message"] for s in range(3)] \
        == ["simulated crash"] * 3
    monkeypatch.setattr(train_mod, "make_callbacks", original)
    resumed = train(cfg)
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
    from dmlight.training.module import accuracy, member_accuracies

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 257, 10, generator=g)
    logits[1, :50] = 0.0  # all-equal rows: ties go to the first class in both
    y = torch.randint(0, 10, (257,), generator=g)
    got = member_accuracies(logits, y)
    want = torch.stack([accuracy(m, y) for m in logits])
    assert got.shape == (4,) and torch.equal(got, want)
    assert 0.0 < got.min() and got.max() < 0.5  # random logits: near 10%, not a degenerate 0 or 1


@pytest.mark.slow
def test_a_mini_batch_ensemble_equals_its_solo_runs(tmp_path):
    """Mini-batch order does not depend on the seed (data.shuffle_seed), so ensemble members
    see their solo runs' batches and train to the same bytes."""
    common = ["experiment=learn_distance_metrics", "data.batch_size=1000", "optimizer.lr=0.0005",
              "trainer.max_epochs=4", "run.log_every=2"]
    train(train_cfg(*common, "seeds=[0,1]", f"paths.output_dir={tmp_path}/ens"))
    for s in (0, 1):
        solo = train_cfg(*common, f"seed={s}", f"paths.output_dir={tmp_path}/solo")
        train(solo, member_dir(solo, s))
        member = member_dir(train_cfg(*common, f"seed={s}", f"paths.output_dir={tmp_path}/ens"), s)
        assert (member / "metrics.csv").read_bytes() == (member_dir(solo, s) / "metrics.csv").read_bytes()
        assert len(read_metrics(member)) == 4


def test_an_ensemble_refuses_a_part_it_has_no_stacked_form_of():
    """A parametrised part it would otherwise run with the template's (member 0's) weights for all."""
    nets = [build_network(train_cfg(), seed=s) for s in range(2)]
    for net in nets:
        net.neg = torch.nn.LayerNorm(10)
    with pytest.raises(TypeError, match="no stacked form of neg .LayerNorm.*seed=<s>"):
        Ensemble(nets)


@pytest.mark.slow
def test_save_checkpoint_writes_the_path_lightning_is_given(tmp_path):
    """Lightning's CheckpointIO contract: trainer.save_checkpoint(path) writes `path` (the first member's state);
    the other member's goes beside it, and loading that path gives the ensemble back."""
    import hydra

    from dmlight.data.datasets import load_data_cfg
    from dmlight.training.checkpoints import MemberCheckpoints
    from dmlight.training.module import DistanceModule

    cfg = train_cfg("experiment=use_distance_metrics", "optimizer=adam", "data=synthetic")
    data = load_data_cfg(cfg.data)
    ens = Ensemble([build_network(cfg, seed=s, sizes=data.sizes()) for s in (3, 8)])
    module = DistanceModule(ens, data, hydra.utils.instantiate(cfg.optimizer), None, 1)
    dirs = [tmp_path / "seed3", tmp_path / "seed8"]
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, plugins=[MemberCheckpoints(dirs)],
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module)
    target = tmp_path / "elsewhere" / "x.ckpt"
    trainer.save_checkpoint(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.ckpt", "x.member1.ckpt"]
    assert not (dirs[0] / "checkpoints").exists()  # nothing written where it was not asked
    first = torch.load(target, weights_only=False)
    assert torch.equal(first["state_dict"]["net.hidden.weight"], module.members()[0].hidden.weight)
    assert first["epoch"] == 3 and "exp_avg" in first["optimizer_states"][0]["state"][0]
    inside = dirs[0] / "checkpoints" / "epoch3.ckpt"
    trainer.save_checkpoint(inside)
    assert (dirs[1] / "checkpoints" / "epoch3.ckpt").is_file()
    back = MemberCheckpoints(dirs).load_checkpoint(target)
    assert all(torch.equal(back["state_dict"][f"net.{k}"], v) for k, v in ens.state_dict().items())
    trainer.strategy.remove_checkpoint(target)
    assert list(target.parent.iterdir()) == []
