"""Per-epoch time of dmlight's training vs a plain PyTorch full-batch loop, same process.

Both train the same model (ReLU, USE settings) on the same data, doing the same work per
epoch: one full-batch SGD step, train loss and accuracy from that forward pass, and the test
accuracy after the step. Prints the ratio dmlight / plain (goal: <= 1.05).

    python bench/train_speed.py [--epochs 1000] [--data mnist5k] [--json out.json]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.config import compose_config
from dmlight.data import load_data
from dmlight.train import build_network, train


def plain_loop(cfg, data, epochs: int) -> float:
    net = build_network(cfg)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr)
    history = torch.empty(epochs, 3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        logits = net(data.x_train)
        loss = F.cross_entropy(logits, data.y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            history[epoch, 0] = loss.detach()
            history[epoch, 1] = (logits.argmax(1) == data.y_train).float().mean()
            history[epoch, 2] = (net(data.x_test).argmax(1) == data.y_test).float().mean()
    return (time.perf_counter() - t0) / epochs


class LoopTimer(pl.Callback):
    """Seconds from the first to the last epoch: the steady state, without fit()'s set-up."""

    def on_train_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.t0


def dmlight_loop(cfg, epochs: int) -> tuple[float, float]:
    """(per-epoch seconds over the whole fit(), per-epoch seconds of the epoch loop alone)."""
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, tmp, callbacks=[timer])
    return summary["fit_time_s"] / epochs, timer.seconds / epochs


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = compose_config([f"data={args.data}", "experiment=use_distance_metrics", "perturbation=none",
                          f"trainer.max_epochs={args.epochs}", "trainer.accelerator=cpu",
                          "run.progress_every=0", "run.checkpoint_every=1000000"])
    data = load_data(args.data)
    plain_loop(cfg, data, 20), dmlight_loop(cfg, 20)  # warm-up: allocator, imports
    plain, fit, loop = [], [], []
    for _ in range(args.repeats):  # interleaved, best of N: the machine's noise hits both alike
        plain.append(plain_loop(cfg, data, args.epochs))
        f, l = dmlight_loop(cfg, args.epochs)
        fit.append(f)
        loop.append(l)
    result = {"bench": "train_speed", "data": args.data, "epochs": args.epochs,
              "plain_ms_per_epoch": 1e3 * min(plain), "dmlight_loop_ms_per_epoch": 1e3 * min(loop),
              "dmlight_fit_ms_per_epoch": 1e3 * min(fit), "ratio": min(loop) / min(plain),
              "ratio_with_setup": min(fit) / min(plain)}
    print(f"train speed ({args.data}, {args.epochs} epochs, best of {args.repeats}): plain "
          f"{result['plain_ms_per_epoch']:.2f} ms/epoch; dmlight {result['dmlight_loop_ms_per_epoch']:.2f} "
          f"ms/epoch in the epoch loop, ratio {result['ratio']:.3f} (goal <= 1.05); "
          f"{result['dmlight_fit_ms_per_epoch']:.2f} ms/epoch counting fit() set-up and the final "
          f"checkpoint, ratio {result['ratio_with_setup']:.3f}")
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
