"""Time of the USE perturbation sweep: dmlight's sweep engine vs a naive full forward per point.

Both sweep the paper's full USE grid (scale 100, clip 100, offset 125 points) on the same
ReLU model (USE settings, a few full-batch SGD steps from its seed) over Fashion-MNIST's
60,000 training images (synthetic images of its shape when Fashion-MNIST is absent), in this
one process, alternating: engine, naive, engine, naive, ... The naive loop sets the
Perturbation layer and runs the whole network on all rows per point. Prints each side's best
time and the ratio (goal >= 10x); exits with status 1 unless every point's count is identical.

    python bench/perturb_speed.py [--data fashion_mnist] [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
import torch.nn.functional as F

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.config import compose_config
from dmlight.data.datasets import DataError, load_data
from dmlight.perturbation.formulas import UnitRanges, perturbation_values, stack_values, sweep_points
from dmlight.perturbation.engine import DEFAULT_CHUNK_ROWS, network_sweep
from dmlight.train import build_network


def trained_model(cfg, data, steps: int):
    net = build_network(cfg)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr)
    for _ in range(steps):  # full batch, as the papers train
        loss = F.cross_entropy(net(data.x_train), data.y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.inference_mode()
def naive_sweep(net, x, y, points: dict[str, list[float]]) -> dict[str, list[int]]:
    """The reference: unit ranges from one forward pass, then the whole network per point."""
    activation = net.activation(net.hidden(x))
    ranges = UnitRanges(activation.amin(0), activation.amax(0))
    out = {"baseline": [int((net(x).argmax(1) == y).sum())]}
    for kind, magnitudes in points.items():
        out[kind] = []
        for p in magnitudes:
            v = perturbation_values(kind, p, ranges)
            hook = net.hidden.register_forward_hook(
                lambda m, i, o: torch.clamp(o * v["scale"] + v["offset"], min=v["lower"], max=v["upper"]))
            out[kind].append(int((net(x).argmax(1) == y).sum()))
            hook.remove()
    return out


def engine_sweep(net, x, y, points: dict[str, list[float]], chunk_rows: int):
    """dmlight's engine, everything included: trunk pass, unit ranges, baseline, every point."""
    sweep = network_sweep(net, x, y, chunk_rows=chunk_rows)
    ranges = sweep.unit_ranges()
    out = {"baseline": [sweep.baseline]}
    for kind, magnitudes in points.items():
        out[kind] = sweep.correct(**stack_values(kind, magnitudes, ranges))
    return out


def engine_measure(net, x, y, points: dict[str, list[float]], chunk_rows: int) -> dict[str, list[int]]:
    """The engine as every sweep runs it: counts and the size of each point's change (SplitSweep.measure)."""
    sweep = network_sweep(net, x, y, chunk_rows=chunk_rows)
    ranges = sweep.unit_ranges()
    out = {"baseline": [sweep.baseline]}
    for kind, magnitudes in points.items():
        out[kind] = sweep.measure(**stack_values(kind, magnitudes, ranges))[0]
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--steps", type=int, default=20, help="full-batch SGD steps before the sweep")
    ap.add_argument("--repeats", type=int, default=2, help="engine/naive rounds (each side's best counts)")
    ap.add_argument("--chunk-rows", type=int, default=None)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = compose_config([f"data={args.data}", "experiment=use_distance_metrics", "trainer.accelerator=cpu"])
    pcfg = cfg.perturbation
    chunk_rows = args.chunk_rows or pcfg.get("chunk_rows") or DEFAULT_CHUNK_ROWS
    try:
        data, data_name = load_data(args.data, download=False), args.data
    except DataError as e:
        print(f"{args.data} unavailable ({e}); timing synthetic images of its shape instead")
        data, data_name = load_data("synthetic", n_train=60000, n_test=10000), "synthetic"
    x, y = data.x_train, data.y_train
    net = trained_model(cfg, data, args.steps)
    points = sweep_points(pcfg, net.site, net.widths[0])
    n_points = sum(len(v) for v in points.values())

    engine_sweep(net, x[:4096], y[:4096], points, chunk_rows)  # warm-up: allocator, threads
    engine_times, naive_times, measure_times, identical = [], [], [], True
    for _ in range(args.repeats):
        engine, t = timed(engine_sweep, net, x, y, points, chunk_rows)
        engine_times.append(t)
        measured, t = timed(engine_measure, net, x, y, points, chunk_rows)
        measure_times.append(t)
        identical &= measured == engine
        naive, t = timed(naive_sweep, net, x, y, points)
        naive_times.append(t)
        identical &= engine == naive
    mismatches = sum(a != b for k in naive for a, b in zip(naive[k], engine[k]))
    engine_time, naive_time, measure_time = min(engine_times), min(naive_times), min(measure_times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"bench": "perturb_speed", "data": data_name, "rows": len(x), "points": n_points,
              "threads": torch.get_num_threads(), "chunk_rows": chunk_rows,
              "naive_s": naive_time, "engine_s": engine_time, "naive_all_s": naive_times,
              "engine_all_s": engine_times, "naive_ms_per_point": 1e3 * naive_time / n_points,
              "engine_ms_per_point": 1e3 * engine_time / n_points, "ratio": naive_time / engine_time,
              "engine_with_change_s": measure_time, "ratio_with_change": naive_time / measure_time,
              "identical": identical, "mismatched_points": mismatches,
              "baseline_acc": naive["baseline"][0] / len(x), "peak_rss_mb": peak_rss_mb}
    print(f"perturb speed ({data_name}, {len(x)} rows, {n_points} points, {result['threads']} threads): "
          f"naive {naive_time:.2f} s ({result['naive_ms_per_point']:.1f} ms/point), engine {engine_time:.3f} s "
          f"({result['engine_ms_per_point']:.2f} ms/point), best of {args.repeats} alternating, "
          f"ratio {result['ratio']:.1f}x (goal on 60,000 rows: >= 10x); with the size-of-change column (every sweep "
          f"since the study) {measure_time:.3f} s, ratio {result['ratio_with_change']:.1f}x, "
          f"accuracies identical: {'yes' if identical else f'NO ({mismatches} points differ)'}, "
          f"peak RSS {peak_rss_mb:.0f} MB")
    save(result, args.json)
    if not identical:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
