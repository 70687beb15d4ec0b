"""The DistanceProbe's cost during training, as a share of the training time of the same run.

dmlight's USE experiment on mnist5k (ReLU_Bias, full batch) with `perturbation.every_n_epochs`
(the coarse during_grids: 96 points on the training set per sweep, at epoch 0 and every N
epochs) and the full 325-point grid when training ends. The probe's sweeps are timed inside
the run (the callback's `sweep`, wrapped); the rest of the run's wall time is training. Goal:
the sweeps during training cost at most 10% of the training time at every_n_epochs=100.

A second measure, run alternately: the same training with and without sweeps during training
(the final sweep in both), best of `--repeats` each.

    python bench/probe_cost.py --epochs 1000 --every 100 --json outputs/bench/probe_cost.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import save  # noqa: E402
from dmlight.perturbation import probe  # noqa: E402
from dmlight.config import compose_config  # noqa: E402
from dmlight.train import train  # noqa: E402

SPENT: dict[str, list[float]] = {"during": [], "final": []}
_sweep = probe.DistanceProbe.sweep


def timed_sweep(self, trainer, pl_module, epoch, final):
    t0 = time.perf_counter()
    try:
        return _sweep(self, trainer, pl_module, epoch, final)
    finally:
        SPENT["final" if final else "during"].append(time.perf_counter() - t0)


probe.DistanceProbe.sweep = timed_sweep


def run(epochs: int, every: int | None, data: str) -> tuple[float, list[float], list[float]]:
    """(wall seconds of train(), seconds of each sweep during training, of the final sweep)."""
    for v in SPENT.values():
        v.clear()
    cfg = compose_config(["experiment=use_distance_metrics", f"data={data}", "trainer.accelerator=cpu",
                          f"trainer.max_epochs={epochs}", "run.progress_every=0",
                          f"perturbation.every_n_epochs={every if every else 'null'}"])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train(cfg, Path(d) / "run")
        wall = time.perf_counter() - t0
    return wall, list(SPENT["during"]), list(SPENT["final"])


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    use = compose_config(["experiment=use_distance_metrics"]).perturbation
    points = sum(len(v) for v in probe.during_points(use).values())  # the coarse grid of conf/perturbation/use.yaml
    shares, with_probe, without = [], [], []
    for _ in range(args.repeats):  # alternate, so drift hits both sides
        wall, during, final = run(args.epochs, args.every, args.data)
        training = wall - sum(during) - sum(final)
        shares.append(sum(during) / training)
        with_probe.append(wall - sum(final))
        wall0, _, final0 = run(args.epochs, None, args.data)
        without.append(wall0 - sum(final0))
    best = min(range(args.repeats), key=lambda i: shares[i])
    result = {
        "epochs": args.epochs, "every_n_epochs": args.every, "data": args.data,
        "sweeps_during_training": len(during), "points_per_sweep": points,
        "seconds_per_sweep_during": sum(during) / max(1, len(during)),
        "seconds_final_full_grid": sum(final),
        "training_seconds": training,
        "probe_share_of_training": shares,
        "probe_share_best": shares[best],
        "wall_with_sweeps_s": with_probe, "wall_without_sweeps_s": without,
        "with_over_without_best": min(with_probe) / min(without),
        "goal_share": 0.10,
    }
    print(f"probe during training ({args.data}, {args.epochs} epochs, every {args.every}): "
          f"{len(during)} sweeps of {points} points x {result['seconds_per_sweep_during'] * 1000:.0f} ms; "
          f"share of training time {', '.join(f'{100 * s:.1f}%' for s in shares)} (goal <= 10%); "
          f"final full grid {sum(final):.2f} s; training alone {training:.2f} s")
    print(f"wall without the final sweep, best of {args.repeats}: with sweeps {min(with_probe):.2f} s, "
          f"without {min(without):.2f} s: {result['with_over_without_best']:.3f}x")
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
