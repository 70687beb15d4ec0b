"""The small layers both papers compose their networks from."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


class Abs(nn.Module):
    """y = |x|, the USE/LEARN "Abs" activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class Neg(nn.Module):
    """y = -x. After a non-negative output it forces a distance code on the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class OffsetL2(nn.Module):
    """LEARN's prototype-distance layer: `y_j = sqrt(max(sum_i alpha_ji (x_i - mu_ji)^2, 1e-12))`.

    Weighted by alpha (not alpha^2), as in the authors' code that produced the numbers.
    Init: mu ~ Normal(0, 0.1^2), alpha = 1.

    Example:
        >>> layer = OffsetL2(4, 2)
        >>> layer(torch.zeros(5, 4)).shape
        torch.Size([5, 2])
    """

    eps = 1e-12

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.mu = nn.Parameter(torch.randn(out_features, in_features) * 0.1)
        self.alpha = nn.Parameter(torch.ones(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return offset_l2(x, self.mu, self.alpha)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def offset_l2(x: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """OffsetL2's formula for x (n, in) and mu, alpha (out, in), or stacked for an ensemble:
    x (members, n, in) and mu, alpha (members, out, in). Output (..., n, out).

    The (n, out, in) differences are the layer's whole cost. They are made `block_rows` rows
    at a time and made again in the backward pass instead of being kept: on a CPU, blocks
    of ~1 MB stay in cache (forward and backward ~2x faster than whole-tensor autograd on
    mnist5k); on a GPU blocks of ~256 MB bound the memory (autograd would keep three
    rows x out x in tensors per member from forward to backward). Default: by device.

    Example:
        >>> offset_l2(torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 2.0)).tolist()
        [[2.0]]
    """
    if block_rows is None:
        row_bytes = x.element_size() * mu[..., 0, 0].numel() * mu.shape[-2] * mu.shape[-1]
        block_rows = offset_l2_block_rows(x.device, row_bytes)
    return _OffsetL2.apply(x, mu, alpha, block_rows)


def offset_l2_block_rows(device: torch.device | str, row_bytes: int) -> int:
    """Rows per block of OffsetL2's terms: ~1 MB on a CPU (its cache), ~256 MB elsewhere (bounded memory)."""
    block_bytes = (1 << 20) if torch.device(device).type == "cpu" else (256 << 20)
    return max(1, block_bytes // row_bytes)


class _OffsetL2(torch.autograd.Function):
    """y = sqrt(max(sum_i alpha (x_i - mu_i)^2, eps)) in row blocks; see `offset_l2`."""

    @staticmethod
    def _blocks(x, mu, alpha, block_rows):
        """(row slice, differences (..., rows, out, in), alpha as (..., 1, out, in)) per block."""
        mu, alpha = mu.unsqueeze(-3), alpha.unsqueeze(-3)
        for start in range(0, x.shape[-2], block_rows):
            rows = slice(start, start + block_rows)
            yield rows, x[..., rows, :].unsqueeze(-2) - mu, alpha

    @staticmethod
    def forward(ctx, x, mu, alpha, block_rows):
        y = x.new_empty(*x.shape[:-1], mu.shape[-2])
        for rows, diff, a in _OffsetL2._blocks(x, mu, alpha, block_rows):
            y[..., rows, :] = torch.sqrt(torch.clamp((a * diff * diff).sum(-1), min=OffsetL2.eps))
        ctx.save_for_backward(x, mu, alpha, y)
        ctx.block_rows = block_rows
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, mu, alpha, y = ctx.saved_tensors
        grad_x, grad_mu, grad_alpha = torch.empty_like(x), torch.zeros_like(mu), torch.zeros_like(alpha)
        for rows, diff, a in _OffsetL2._blocks(x, mu, alpha, ctx.block_rows):
            # d sqrt(max(s, eps)) / ds = 1 / (2 y) where s >= eps, else 0 (the clamp).
            s = (a * diff * diff).sum(-1)
            g = torch.where(s >= OffsetL2.eps, grad_y[..., rows, :] / (2 * y[..., rows, :]), 0.0).unsqueeze(-1)
            t = g * a * diff  # half of d s / d x_i, per output
            grad_x[..., rows, :] = 2 * t.sum(-2)
            grad_mu -= 2 * t.sum(-3)
            grad_alpha += (g * diff * diff).sum(-3)
        return grad_x, grad_mu, grad_alpha, None


class _StackedLinear(torch.autograd.Function):
    """Every member's `h @ w.T + b` at once; see `stacked_linear`."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        members, d_out, d_in = weight.shape
        if h.device.type == "cpu":
            # Per member, the very call nn.Linear makes: bit-identical to a solo run on any CPU.
            # (A slice of one wide product matched on one AMD CPU, not on an AVX-512 Intel one.)
            return torch.stack([F.linear(h if h.ndim == 2 else h[m], weight[m], None if bias is None else bias[m])
                                for m in range(members)])
        if h.ndim == 2:  # the shared input: one matrix product for every member, then members first
            flat = weight.reshape(members * d_out, d_in).t()
            y = h.mm(flat) if bias is None else torch.addmm(bias.reshape(-1), h, flat)
            return y.view(len(h), members, d_out).transpose(0, 1).contiguous()
        wt = weight.transpose(1, 2)
        return torch.bmm(h, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, wt)

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        exact = grad.device.type == "cpu"
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = stacked_input_grad(grad, weight, exact)
            if h.ndim == 2:
                grad_h = grad_h.sum(0)
        return grad_h, stacked_weight_grad(grad, h, exact), grad.sum(1) if ctx.has_bias else None


# The two products of a Linear's backward, for every member. exact=True makes, per member, the
# very call nn.Linear's backward makes: on a CPU the result is then bit-identical to a solo
# run's, where one batched product rounds differently for some shapes. Elsewhere (GPU) one
# batched product: solo and batched kernels differ there anyway, and one launch beats one per member.

def stacked_weight_grad(grad: torch.Tensor, h: torch.Tensor, exact: bool) -> torch.Tensor:
    """d(loss)/d(weight): grad (members, n, out), h (n, in) shared or (members, n, in) -> (members, out, in)."""
    if exact:
        return torch.stack([g.t().mm(h if h.ndim == 2 else h[m]) for m, g in enumerate(grad)])
    hs = h.expand(grad.shape[0], *h.shape) if h.ndim == 2 else h
    return torch.bmm(grad.transpose(1, 2), hs)


def stacked_input_grad(grad: torch.Tensor, weight: torch.Tensor, exact: bool) -> torch.Tensor:
    """d(loss)/d(input): grad (members, n, out), weight (members, out, in) -> (members, n, in)."""
    if exact:
        return torch.stack([g.mm(w) for g, w in zip(grad, weight)])
    return torch.bmm(grad, weight)


def stacked_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.Linear for every member of an ensemble at once.

    h is (n, in), one input shared by all members, or (members, n, in); weight is
    (members, out, in), bias (members, out) or None. Returns (members, n, out). On a CPU each
    member's output and gradients are bit-identical to its own nn.Linear's.

    Example:
        >>> w, b = torch.randn(3, 2, 4), torch.randn(3, 2)
        >>> stacked_linear(torch.randn(5, 4), w, b).shape
        torch.Size([3, 5, 2])
    """
    return _StackedLinear.apply(h, weight, bias)
