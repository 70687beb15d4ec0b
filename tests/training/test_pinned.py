"""Behaviours that were right but that no test defended, each against a value from outside the code under test:
PAPERS.md's literals, hand-built matrices with literal counts, the run files themselves."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dmlight.data.datasets import preprocess_images
from dmlight.models.networks import build_model, unit_counts
from dmlight.training.module import Batches
from dmlight.runs.layout import RunDirConflict
from tests.conftest import crash_at_epoch, train_cfg


def test_standardize_uses_the_papers_mean_and_std():
    """PAPERS.md: (x/255 - 0.1307) / 0.3081, hand-computed for three pixels."""
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, 0], images[0, 3, 5], images[1, 27, 27] = 255, 51, 128
    x = preprocess_images(images, "standardize")
    assert x[0, 0].item() == pytest.approx(2.821487, abs=1e-6)            # (1 - 0.1307) / 0.3081
    assert x[0, 3 * 28 + 5].item() == pytest.approx(0.224927, abs=1e-6)  # (0.2 - 0.1307) / 0.3081
    assert x[1, 783].item() == pytest.approx(1.205001, abs=1e-6)        # (128/255 - 0.1307) / 0.3081
    assert x[0, 1].item() == pytest.approx(-0.424213, abs=1e-6)         # a black pixel: -0.1307 / 0.3081
    assert preprocess_images(images, "raw")[0, 3 * 28 + 5].item() == 51.0


def test_dead_and_rare_units_on_a_hand_built_activation_matrix():
    """dead: |a| <= 1e-6 on every row; rare: active on some rows but fewer than 1% of them."""
    rows = 200
    acts = torch.zeros(rows, 6)
    acts[7, 0] = 3.0             # active on 1 row, 0.5%: rare
    acts[[4, 150], 1] = 0.2      # on exactly 2 rows, 1%: not rare
    acts[:10, 2] = 1.0           # 5%: not rare
    acts[:, 3] = 5e-4            # largest value 5e-4, above the 1e-6 tolerance: active everywhere
    acts[11, 4] = 1e-6           # at the tolerance on one row, nothing else: dead
    # unit 5 stays 0 everywhere: dead
    net = build_model("mlp", "relu", hidden=6, in_features=6)
    with torch.no_grad():  # the hidden layer passes its input through: the activation matrix is `acts`
        net.hidden.weight.copy_(torch.eye(6))
        net.hidden.bias.zero_()
    counts = unit_counts(net, acts)["activation"]
    assert counts == {"n": 6, "dead": 2, "rare": 1}


@pytest.mark.slow
def test_a_run_directory_refuses_a_config_with_other_epochs(tmp_path):
    from dmlight.train import train

    run_dir = tmp_path / "run"
    train(train_cfg("data=synthetic", "trainer.max_epochs=4"), run_dir)
    with pytest.raises(RunDirConflict, match=r"trainer.max_epochs: 4 there, 6 now"):
        train(train_cfg("data=synthetic", "trainer.max_epochs=6"), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["status"] == "complete"  # untouched


def _epoch_orders(x: torch.Tensor, batches) -> list[int]:
    """The row indices of `x` in the order an epoch's batches hold them (rows of x are distinct)."""
    lookup = {tuple(row.tolist()): i for i, row in enumerate(x)}
    return [lookup[tuple(row.tolist())] for xb, _ in batches for row in xb]


def test_mini_batch_orders_change_every_epoch_and_cover_the_set():
    x = torch.arange(37 * 2, dtype=torch.float32).reshape(37, 2)
    y = torch.arange(37) % 10
    epoch = [0]
    batches = Batches(x, y, 8, shuffle_seed=3, epoch=lambda: epoch[0])
    orders = []
    for e in range(4):
        epoch[0] = e
        order = _epoch_orders(x, list(batches))
        assert sorted(order) == list(range(37))  # each epoch a permutation of the whole set
        assert [len(b[0]) for b in batches] == [8, 8, 8, 8, 5]
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    assert orders[0] != list(range(37))


class _SeenRows(pl.Callback):
    """The first column of every training batch, per epoch: which rows each epoch saw, in order."""

    def __init__(self):
        self.epochs: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs.setdefault(trainer.current_epoch, []).extend(batch[0][:, 0].tolist())


@pytest.mark.slow
def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one(tmp_path, monkeypatch):
    from dmlight.train import train

    args = ("data=synthetic", "data.n_train=90", "data.n_test=20", "data.batch_size=16", "data.shuffle_seed=7",
            "trainer.max_epochs=5", "run.checkpoint_every=1", "optimizer=adam", "seed=13")
    full = _SeenRows()
    train(train_cfg(*args), tmp_path / "full", callbacks=[full])
    crash_at_epoch(monkeypatch, train_cfg(*args), tmp_path / "resumed", 3)
    resumed = _SeenRows()
    train(train_cfg(*args), tmp_path / "resumed", callbacks=[resumed])
    assert sorted(resumed.epochs) == [3, 4]  # it resumed after the checkpoint of epoch 2
    assert resumed.epochs[3] == full.epochs[3] and resumed.epochs[4] == full.epochs[4]
    assert full.epochs[3] != full.epochs[4]
    a = (tmp_path / "full" / "metrics.csv").read_text()
    assert a == (tmp_path / "resumed" / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_retired_member_keeps_the_parameters_it_diverged_with(tmp_path):
    """Seed 3 at lr 1000 with a head bias: its loss is inf at epoch 5, after which plain SGD keeps moving the head
    bias (its gradient stays finite). Retired at the epoch it diverged, its parameters must stay those of that
    epoch's step (a plain PyTorch loop's, bit for bit), not what 25 further steps make of them."""
    import torch.nn.functional as F

    from dmlight.data.datasets import load_data
    from dmlight.models.networks import build_model
    from dmlight.train import train

    class Final(pl.Callback):
        def on_train_end(self, trainer, module):
            self.members = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in module.members()]

    final = Final()
    out = train(train_cfg("experiment=use_distance_metrics", "perturbation=none", "optimizer.lr=1000",
                          "trainer.max_epochs=30", "run.log_every=1", "seeds=[3,4,8]",
                          f"paths.output_dir={tmp_path}"), callbacks=[final])
    assert [(s["status"], s.get("diverged_epoch")) for s in out] == [("diverged", 5), ("complete", None),
                                                                      ("complete", None)]
    data = load_data("mnist5k")
    pl.seed_everything(3, verbose=False)
    net = build_model("mlp", "relu", head_bias=True)
    opt = torch.optim.SGD(net.parameters(), lr=1000)
    after = {}
    for epoch in range(1, 31):
        opt.zero_grad()
        loss = F.cross_entropy(net(data.x_train), data.y_train)
        loss.backward()
        opt.step()
        after[epoch] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        assert torch.isfinite(loss) == (epoch != 5)  # inf at epoch 5 only: the divergence the run recorded
    retired = final.members[0]
    assert all(torch.equal(retired[k], after[5][k]) for k in retired)
    assert all(torch.isfinite(v).all() for v in retired.values())
    assert not torch.equal(after[5]["head.bias"], after[30]["head.bias"])  # the steps it was spared move it
