"""Throughput of 20 seeds trained as one stacked ensemble vs 20 solo runs, same process.

Both go through dmlight's real training path (`dmlight.train.train`) on the same data with
the same settings; throughput is member-epochs per second. Goal on a 2-core CPU: >= 1.3x.

It also prints the most stacking could gain here. Stacking shares the input, not the
arithmetic: each member still needs its own first-layer products (train forward, weight
gradient, test forward), the same FLOPs as a solo run. Timing those three products alone for
one member gives a bound, solo epoch / matrix-product time, that no ensemble can beat on
this device. Where they are most of the epoch (a CPU) the gain is small; where per-step
overhead dominates (a GPU) it is large.

    python bench/ensemble_speed.py [--seeds 20] [--epochs 200] [--repeats 2] [--data mnist5k] [--json out.json]

The solo block and the ensemble alternate `repeats` times and each side's fastest counts (a
busy machine only ever adds time).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.config import compose_config
from dmlight.data.datasets import load_data
from dmlight.runs.layout import run_dir
from dmlight.train import member_config, train


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


def metrics_bytes(common: list[str], output_dir: str, seed: int) -> bytes:
    """metrics.csv of seed `seed`'s run under `output_dir`, as bytes."""
    cfg = compose_config([*common, f"seed={seed}", f"paths.output_dir={output_dir}"])
    return (run_dir(member_config(cfg, seed)) / "metrics.csv").read_bytes()


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    common = [f"data={args.data}", "experiment=learn_distance_metrics", f"trainer.max_epochs={args.epochs}",
              "trainer.accelerator=cpu", "run.progress_every=0", f"run.checkpoint_every={args.epochs}"]
    seeds = ",".join(map(str, range(args.seeds)))
    solos, ensembles, identical = [], [], True
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for s in range(args.seeds):
                cfg = compose_config([*common, f"seed={s}", f"paths.output_dir={tmp}/solo"])
                train(cfg)
            solos.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            train(compose_config([*common, f"seeds=[{seeds}]", f"paths.output_dir={tmp}/ens"]))
            ensembles.append(time.perf_counter() - t0)
            # Same work: every member must record exactly what its solo run did (bit-identical on a CPU).
            identical &= all(metrics_bytes(common, f"{tmp}/ens", s) == metrics_bytes(common, f"{tmp}/solo", s)
                             for s in range(args.seeds))
    solo, ens = min(solos), min(ensembles)
    work = args.seeds * args.epochs
    matmul = matmul_seconds(args.data, int(compose_config(common).arch.hidden))
    result = {"bench": "ensemble_speed", "data": args.data, "seeds": args.seeds, "epochs": args.epochs,
              "repeats": args.repeats, "solo_s": solo, "ensemble_s": ens, "solo_trials_s": solos,
              "ensemble_trials_s": ensembles, "solo_member_epochs_per_s": work / solo,
              "ensemble_member_epochs_per_s": work / ens, "ratio": solo / ens,
              "solo_ms_per_epoch": 1e3 * solo / work, "matmul_ms_per_epoch": 1e3 * matmul,
              "max_ratio": solo / work / matmul, "identical": identical}
    print(f"ensemble speed ({args.data}, {args.seeds} seeds x {args.epochs} epochs): {args.seeds} solo runs "
          f"{solo:.1f} s, one ensemble {ens:.1f} s (best of {args.repeats}), throughput ratio {solo / ens:.2f}x "
          f"(goal >= 1.3x); members' metrics identical to the solo runs': {'yes' if identical else 'NO'}")
    print(f"  bound: a solo epoch takes {result['solo_ms_per_epoch']:.2f} ms, of which {1e3 * matmul:.2f} ms are "
          f"first-layer matrix products every member needs anyway: stacking can gain at most "
          f"{result['max_ratio']:.2f}x on this device")
    save(result, args.json)
    if not identical:
        raise SystemExit("ensemble members recorded other metrics than their solo runs: not the same work")
    return result


if __name__ == "__main__":
    main()
