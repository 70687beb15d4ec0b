"""Throughput of 20 seeds trained as one stacked ensemble vs 20 solo runs, same process.

Both go through dmlight's real training path (`dmlight.train.train`) on the same data with
the same settings; throughput is member-epochs per second. Goal on a 2-core CPU: >= 1.3x.

It also prints the most stacking could gain here. Stacking shares the input, not the
arithmetic: each member still needs its own first-layer products (train forward, weight
gradient, test forward), the same FLOPs as a solo run. Timing those three products alone for
one member gives a bound, solo epoch / matrix-product time, that no ensemble can beat on
this device. Where they are most of the epoch (a CPU) the gain is small; where per-step
overhead dominates (a GPU) it is large.

    python bench/ensemble_speed.py [--seeds 20] [--epochs 200] [--data mnist5k] [--json out.json]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.config import compose_config
from dmlight.data import load_data
from dmlight.train import member_dir, train


def matmul_seconds(data: str, hidden: int, repeats: int = 30) -> float:
    """Best time of one member's first-layer products per epoch: train forward, weight
    gradient, test forward (what stacking cannot share)."""
    d = load_data(data)
    x, xt = d.x_train, d.x_test
    w = torch.randn(hidden, x.shape[1])
    g = torch.randn(x.shape[0], hidden)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x @ w.t(), g.t() @ x, xt @ w.t()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--json")
    args = ap.parse_args()
    common = [f"data={args.data}", "experiment=learn_distance_metrics", f"trainer.max_epochs={args.epochs}",
              "trainer.accelerator=cpu", "run.progress_every=0", f"run.checkpoint_every={args.epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for s in range(args.seeds):
            cfg = compose_config([*common, f"seed={s}", f"paths.output_dir={tmp}/solo"])
            train(cfg, member_dir(cfg, s))
        solo = time.perf_counter() - t0
        t0 = time.perf_counter()
        seeds = ",".join(map(str, range(args.seeds)))
        train(compose_config([*common, f"seeds=[{seeds}]", f"paths.output_dir={tmp}/ens"]), f"{tmp}/ens_job")
        ens = time.perf_counter() - t0
    work = args.seeds * args.epochs
    matmul = matmul_seconds(args.data, int(compose_config(common).arch.hidden))
    result = {"bench": "ensemble_speed", "data": args.data, "seeds": args.seeds, "epochs": args.epochs,
              "solo_s": solo, "ensemble_s": ens, "solo_member_epochs_per_s": work / solo,
              "ensemble_member_epochs_per_s": work / ens, "ratio": solo / ens,
              "solo_ms_per_epoch": 1e3 * solo / work, "matmul_ms_per_epoch": 1e3 * matmul,
              "max_ratio": solo / work / matmul}
    print(f"ensemble speed ({args.data}, {args.seeds} seeds x {args.epochs} epochs): {args.seeds} solo runs "
          f"{solo:.1f} s, one ensemble {ens:.1f} s, throughput ratio {solo / ens:.2f}x (goal >= 1.3x)")
    print(f"  bound: a solo epoch takes {result['solo_ms_per_epoch']:.2f} ms, of which {1e3 * matmul:.2f} ms are "
          f"first-layer matrix products every member needs anyway: stacking can gain at most "
          f"{result['max_ratio']:.2f}x on this device")
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
