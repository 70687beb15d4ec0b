"""OffsetL2's forward + backward: dmlight's blocked layer vs autograd through the plain formula.

Both compute y = sqrt(max(sum_i alpha (x_i - mu_i)^2, 1e-12)) for the hidden activations of a
mnist5k batch (4,000 x 128, ReLU of a freshly initialised first layer) and 10 prototypes, then
its gradients. The plain version is the formula written with broadcasting tensor ops (dmlight's
own layer before it was blocked); autograd keeps its (rows x 10 x 128) terms for the backward
pass. dmlight's makes them in cache-sized row blocks, and again in the backward pass.

Prints the time ratio and the bytes each keeps from forward to backward (counted with saved-
tensor hooks, not sampled), and checks that both give the same output and gradients.

    python bench/offset_l2_speed.py [--repeats 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import time

import torch

from results import save  # bench/results.py (scripts run from bench/ on sys.path)
from dmlight.data.datasets import load_data
from dmlight.models.layers import OffsetL2, offset_l2


def plain_offset_l2(x, mu, alpha):
    diff = x.unsqueeze(-2) - mu
    return torch.sqrt(torch.clamp((alpha * diff * diff).sum(-1), min=OffsetL2.eps))


def saved_bytes(fn, *args) -> int:
    """Bytes of the tensors autograd keeps from fn's forward pass for its backward pass."""
    seen = {}

    def pack(t):
        seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_data("mnist5k")
    hidden = torch.nn.Linear(784, 128)
    with torch.no_grad():
        x = torch.relu(hidden(data.x_train))
    layer = OffsetL2(128, 10)
    grad_y = torch.randn(len(x), 10)
    inputs = [t.detach().clone().requires_grad_() for t in (x, layer.mu, layer.alpha)]

    def step(fn):
        for t in inputs:
            t.grad = None
        t0 = time.perf_counter()
        y = fn(*inputs)
        y.backward(grad_y)
        return time.perf_counter() - t0, y.detach(), [t.grad.clone() for t in inputs]

    step(plain_offset_l2), step(offset_l2)  # warm-up
    plain, ours = [], []
    for _ in range(args.repeats):  # interleaved, best of N
        plain.append(step(plain_offset_l2)[0])
        ours.append(step(offset_l2)[0])
    _, y_plain, g_plain = step(plain_offset_l2)
    _, y_ours, g_ours = step(offset_l2)
    same = torch.equal(y_plain, y_ours) and all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item()) for a, b in zip(g_ours, g_plain))
    kept_plain, kept_ours = saved_bytes(plain_offset_l2, *inputs), saved_bytes(offset_l2, *inputs)
    result = {"bench": "offset_l2_speed", "rows": len(x), "repeats": args.repeats,
              "plain_ms": 1e3 * min(plain), "dmlight_ms": 1e3 * min(ours), "ratio": min(plain) / min(ours),
              "plain_saved_mb": kept_plain / 2**20, "dmlight_saved_mb": kept_ours / 2**20, "same": same}
    print(f"offset_l2 speed ({len(x)} rows x 10 x 128, forward + backward, best of {args.repeats}): plain autograd "
          f"{result['plain_ms']:.2f} ms, dmlight {result['dmlight_ms']:.2f} ms, ratio {result['ratio']:.2f}x; kept for "
          f"backward: {result['plain_saved_mb']:.1f} MB vs {result['dmlight_saved_mb']:.1f} MB; "
          f"same output and gradients: {'yes' if same else 'NO'}")
    save(result, args.json)
    if not same:
        raise SystemExit("dmlight's OffsetL2 and the plain formula disagree")
    return result


if __name__ == "__main__":
    main()
