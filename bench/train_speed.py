"""Per-epoch time of dmlight's training vs a plain PyTorch full-batch loop, same process.

Both train the same model (ReLU, USE settings) on the same data, doing the same work per
epoch: one full-batch SGD step, train loss and accuracy from that forward pass, and the test
accuracy after the step. Prints the ratio dmlight / plain (goal: <= 1.05).

A third contender is the floor any Lightning training pays: a minimal LightningModule whose
training_step is the plain loop's body, run by a Trainer with the same settings. The gap
between it and plain is Lightning's own per-epoch cost (hooks, data fetching, progress
tracking); the gap between dmlight and it is what dmlight adds.

    python bench/train_speed.py [--epochs 150] [--repeats 20] [--data mnist5k] [--json out.json]

The two loops alternate, `repeats` times each, and each side's fastest trial counts (the
noise of a shared machine only ever adds time). Many short trials beat a few long ones here:
a burst of noise then spoils one trial, not the estimate. The median of the per-pair ratios
is printed as a cross-check.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.config import compose_config
from dmlight.data.datasets import load_data
from dmlight.runs.files import METRICS_COLUMNS, read_metrics
from dmlight.train import build_network, train


def plain_epoch(net, opt, data, history: torch.Tensor, epoch: int) -> None:
    """One epoch, plain PyTorch: a full-batch SGD step, then the epoch's three numbers."""
    logits = net(data.x_train)
    loss = F.cross_entropy(logits, data.y_train)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        history[epoch, 0] = loss.detach()
        history[epoch, 1] = (logits.argmax(1) == data.y_train).float().mean()
        history[epoch, 2] = (net(data.x_test).argmax(1) == data.y_test).float().mean()


def plain_loop(cfg, data, epochs: int) -> tuple[float, torch.Tensor]:
    """(per-epoch seconds, history: epochs x (train_loss, train_acc, test_acc))."""
    net = build_network(cfg)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr)
    history = torch.empty(epochs, 3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        plain_epoch(net, opt, data, history, epoch)
    return (time.perf_counter() - t0) / epochs, history


class MinimalModule(pl.LightningModule):
    """The least a LightningModule can do: the plain loop's body as its training_step."""

    def __init__(self, cfg, data, epochs: int):
        super().__init__()
        self.net, self.data, self.lr = build_network(cfg), data, cfg.optimizer.lr
        self.automatic_optimization = False
        self.history = torch.empty(epochs, 3)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=self.lr)

    def train_dataloader(self):
        return [0]  # one batch per epoch; the step reads the full split itself

    def training_step(self, batch, batch_idx):
        plain_epoch(self.net, self.optimizers(use_pl_optimizer=False), self.data, self.history,
                    self.current_epoch)


class LoopTimer(pl.Callback):
    """Seconds from the first to the last epoch: the steady state, without fit()'s set-up."""

    def on_train_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.t0


def lightning_floor(cfg, data, epochs: int) -> tuple[float, torch.Tensor]:
    """(per-epoch seconds of the minimal LightningModule's epoch loop, its history)."""
    timer, module = LoopTimer(), MinimalModule(cfg, data, epochs)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module)
    return timer.seconds / epochs, module.history


def dmlight_loop(cfg, epochs: int) -> tuple[float, float, torch.Tensor]:
    """(per-epoch seconds over the whole fit(), per-epoch seconds of the epoch loop alone,
    history as metrics.csv holds it)."""
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # quiet: 2N+1 runs
        summary = train(cfg, tmp, callbacks=[timer])
        rows = read_metrics(tmp)
    history = torch.tensor([[float(r[k]) for k in METRICS_COLUMNS[1:]] for r in rows])
    return summary["fit_time_s"] / epochs, timer.seconds / epochs, history


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no "GPU available" per trial
    cfg = compose_config([f"data={args.data}", "experiment=use_distance_metrics", "perturbation=none",
                          f"trainer.max_epochs={args.epochs}", "trainer.accelerator=cpu",
                          "run.progress_every=0", "run.checkpoint_every=1000000"])
    data = load_data(args.data)
    plain_loop(cfg, data, 20), lightning_floor(cfg, data, 20), dmlight_loop(cfg, 20)  # warm-up
    plain, floor, fit, loop = [], [], [], []
    for _ in range(args.repeats):  # interleaved, best of N: the machine's noise hits all alike
        p, plain_history = plain_loop(cfg, data, args.epochs)
        m, floor_history = lightning_floor(cfg, data, args.epochs)
        f, l, history = dmlight_loop(cfg, args.epochs)
        plain.append(p)
        floor.append(m)
        fit.append(f)
        loop.append(l)
    # Same work: all start from the same seeded weights and must record the same numbers.
    identical = torch.equal(plain_history, history) and torch.equal(plain_history, floor_history)
    result = {"bench": "train_speed", "data": args.data, "epochs": args.epochs,
              "plain_ms_per_epoch": 1e3 * min(plain), "dmlight_loop_ms_per_epoch": 1e3 * min(loop),
              "dmlight_fit_ms_per_epoch": 1e3 * min(fit), "ratio": min(loop) / min(plain),
              "ratio_with_setup": min(fit) / min(plain),
              "median_pair_ratio": statistics.median(l / p for l, p in zip(loop, plain)),
              "lightning_floor_ms_per_epoch": 1e3 * min(floor), "floor_ratio": min(floor) / min(plain),
              "dmlight_over_floor": min(loop) / min(floor),
              "identical": identical,
              "trials_ms": {"plain": [1e3 * t for t in plain], "floor": [1e3 * t for t in floor],
                            "dmlight": [1e3 * t for t in loop]}}
    print(f"train speed ({args.data}, {args.epochs} epochs, best of {args.repeats}): plain "
          f"{result['plain_ms_per_epoch']:.2f} ms/epoch; dmlight {result['dmlight_loop_ms_per_epoch']:.2f} "
          f"ms/epoch in the epoch loop, ratio {result['ratio']:.3f} (goal <= 1.05); "
          f"{result['dmlight_fit_ms_per_epoch']:.2f} ms/epoch counting fit() set-up and the final "
          f"checkpoint, ratio {result['ratio_with_setup']:.3f}; median of per-pair ratios "
          f"{result['median_pair_ratio']:.3f}; identical metrics: {'yes' if identical else 'NO'}")
    print(f"  Lightning's floor (minimal LightningModule, same body): {result['lightning_floor_ms_per_epoch']:.2f} "
          f"ms/epoch, ratio {result['floor_ratio']:.3f} to plain; dmlight / floor {result['dmlight_over_floor']:.3f}")
    save(result, args.json)
    if not identical:
        raise SystemExit("dmlight and the plain loop recorded different metrics: they did not do the same work")
    return result


if __name__ == "__main__":
    main()
