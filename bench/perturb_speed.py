"""Time of the USE perturbation sweep: dmlight's FastSweep vs a naive full forward per point.

Both sweep the paper's full USE grid (scale 100, clip 100, offset 125 points) on the same
ReLU model (USE settings, a few full-batch SGD steps from its seed) over Fashion-MNIST's
60,000 training images, in this one process. The naive loop sets the Perturbation layer and
runs the whole network on all rows per point. Prints both times and the ratio (goal >= 30x),
and checks that every point's accuracy is identical.

    python bench/perturb_speed.py [--data fashion_mnist] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.config import compose_config
from dmlight.data import load_data
from dmlight.perturbation import FastSweep, UnitRanges, perturbation_values, stack_values, sweep_points
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
            net.perturb.set(**perturbation_values(kind, p, ranges))
            out[kind].append(int((net(x).argmax(1) == y).sum()))
    net.perturb.reset()
    return out


def fast_sweep(net, x, y, points: dict[str, list[float]], chunk_rows: int, points_per_pass: int):
    """dmlight's engine, everything included: trunk pass, unit ranges, baseline, every point."""
    fast = FastSweep(net, x, y, chunk_rows, points_per_pass)
    ranges = fast.unit_ranges()
    out = {"baseline": [fast.baseline()]}
    for kind, magnitudes in points.items():
        out[kind] = fast.correct(**stack_values(kind, magnitudes, ranges))
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--steps", type=int, default=20, help="full-batch SGD steps before the sweep")
    ap.add_argument("--repeats", type=int, default=3, help="fast sweep runs (the best counts)")
    ap.add_argument("--chunk-rows", type=int, default=None)
    ap.add_argument("--points-per-pass", type=int, default=None)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = compose_config([f"data={args.data}", "experiment=use_distance_metrics", "trainer.accelerator=cpu"])
    pcfg = cfg.perturbation
    chunk_rows = args.chunk_rows or pcfg.chunk_rows
    points_per_pass = args.points_per_pass or pcfg.points_per_pass
    data = load_data(args.data)
    x, y = data.x_train, data.y_train
    net = trained_model(cfg, data, args.steps)
    points = sweep_points(pcfg, net.site, net.hidden_units)
    n_points = sum(len(v) for v in points.values())

    fast_sweep(net, x[:4096], y[:4096], points, chunk_rows, points_per_pass)  # warm-up: allocator, threads
    fast_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = fast_sweep(net, x, y, points, chunk_rows, points_per_pass)
        fast_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    naive = naive_sweep(net, x, y, points)
    naive_time = time.perf_counter() - t0

    identical = fast == naive
    mismatches = sum(a != b for k in naive for a, b in zip(naive[k], fast[k]))
    fast_time = min(fast_times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"bench": "perturb_speed", "data": args.data, "rows": len(x), "points": n_points,
              "threads": torch.get_num_threads(), "chunk_rows": chunk_rows, "points_per_pass": points_per_pass,
              "naive_s": naive_time, "fast_s": fast_time, "fast_all_s": fast_times,
              "naive_ms_per_point": 1e3 * naive_time / n_points, "fast_ms_per_point": 1e3 * fast_time / n_points,
              "ratio": naive_time / fast_time, "identical": identical, "mismatched_points": mismatches,
              "baseline_acc": naive["baseline"][0] / len(x), "peak_rss_mb": peak_rss_mb}
    print(f"perturb speed ({args.data}, {len(x)} rows, {n_points} points, {result['threads']} threads): "
          f"naive {naive_time:.2f} s ({result['naive_ms_per_point']:.1f} ms/point), fast {fast_time:.3f} s "
          f"({result['fast_ms_per_point']:.2f} ms/point, best of {args.repeats}), ratio {result['ratio']:.1f}x "
          f"(goal >= 30x), accuracies identical: {'yes' if identical else f'NO ({mismatches} points differ)'}, "
          f"peak RSS {peak_rss_mb:.0f} MB")
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
