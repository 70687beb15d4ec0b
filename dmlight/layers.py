"""The small layers both papers compose their networks from."""
from __future__ import annotations

import math

import torch
from torch import nn


class Abs(nn.Module):
    """y = |x|, the USE/LEARN "Abs" activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class Neg(nn.Module):
    """y = -x. After a non-negative output it forces a distance code on the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class Perturbation(nn.Module):
    """Per-unit `y = clamp(scale * x + offset, lower, upper)`, the identity until set.

    USE's layer is `min(s * x + t, c)` (upper = clip c); LEARN's is a clamp to
    [min_val, max_val]. Both are this one layer with different values set.

    Example:
        >>> p = Perturbation(3)
        >>> p.set(scale=torch.tensor([1.0, 0.5, 2.0]))
        >>> p(torch.ones(1, 3)).tolist()
        [[1.0, 0.5, 2.0]]
        >>> p.reset(); p.is_identity
        True
    """

    def __init__(self, n_units: int):
        super().__init__()
        self.n_units = n_units
        # Values are buffers, not parameters: they are never trained, and they are not
        # saved into checkpoints (persistent=False) since they are evaluation-time state.
        for name, value in self._identity_values().items():
            self.register_buffer(name, torch.full((n_units,), value), persistent=False)
        self.is_identity = True

    @staticmethod
    def _identity_values() -> dict[str, float]:
        return {"scale": 1.0, "offset": 0.0, "lower": -math.inf, "upper": math.inf}

    def set(self, **values: torch.Tensor | float) -> None:
        """Set any of scale, offset, lower, upper (per-unit tensors or scalars); others reset."""
        unknown = set(values) - set(self._identity_values())
        if unknown:
            raise ValueError(f"unknown perturbation value(s) {sorted(unknown)}; "
                             f"accepted: {sorted(self._identity_values())}")
        self.reset()
        for name, value in values.items():
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32).expand(self.n_units))
        self.is_identity = False

    def reset(self) -> None:
        for name, value in self._identity_values().items():
            getattr(self, name).fill_(value)
        self.is_identity = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training never perturbs: skipping keeps the training step exactly the plain network.
        if self.is_identity:
            return x
        return torch.clamp(x * self.scale + self.offset, min=self.lower, max=self.upper)

    def extra_repr(self) -> str:
        return f"n_units={self.n_units}, identity={self.is_identity}"


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
        diff = x.unsqueeze(-2) - self.mu  # (..., out, in)
        return torch.sqrt(torch.clamp((self.alpha * diff * diff).sum(-1), min=self.eps))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
