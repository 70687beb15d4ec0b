"""Where a probe acts in a model: the layer a name points to, the activation after it, the axis of its units.

Torch modules only: dmlight.perturbation.probe (the callback) and dmlight.perturbation.engine (dmlight's own sweeps) both
resolve a layer here, so the two apply one rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dmlight.errors import ProbeError
from dmlight.models.layers import Abs


def is_activation(module: nn.Module) -> bool:
    """An elementwise activation (torch's, or dmlight's Abs): what a unit's range is measured after."""
    return isinstance(module, Abs) or type(module).__module__ == "torch.nn.modules.activation" \
        and not isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.MultiheadAttention, nn.Softmin))


def sequential_parts(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """A Sequential's entries in call order, nested Sequentials flattened ('features.0', ...); None otherwise."""
    if not isinstance(model, nn.Sequential):
        return None
    parts = []
    for name, child in model.named_children():
        inner = sequential_parts(child)
        parts += [(f"{name}.{n}", m) for n, m in inner] if inner is not None else [(name, child)]
    return parts


def call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The names of the leaf modules in the order one forward pass of `model` on `x` calls them."""
    order, handles = [], []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: order.append(name)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def unit_dim_of(module: nn.Module, unit_dim: int | None = None) -> int | None:
    """The axis of `module`'s output that holds its units: `unit_dim` when given; a Linear's features, the last
    axis wherever the Linear sits ((n, features), a transformer's (n, seq, features)); a conv's channels, axis 1;
    None for any other module (its (rows, units) output's axis 1; a larger output needs `unit_dim`).

    Example:
        >>> unit_dim_of(nn.Linear(4, 3)), unit_dim_of(nn.Conv2d(1, 8, 3)), unit_dim_of(nn.Tanh())
        (-1, 1, None)
    """
    if unit_dim is not None:
        return int(unit_dim)
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1
    return None


# Identity in eval mode (the probe's): looked past when finding the activation after a layer.
PASS_THROUGH = (nn.modules.dropout._DropoutNd, nn.Identity)
OWN_OUTPUT = "the layer's own output"


@dataclass
class ProbeSite:
    """Where a probe acts: `target` is the module whose output is perturbed, `activation` the one the
    unit ranges are measured after, or `activation_fn` the callable applied to the layer's output to
    measure them (None for both: ranges of the layer's own output, `ranges_after` says so); `unit_dim`
    the axis of the layer's output that holds its units (`unit_dim_of`)."""

    layer: str
    site: str
    activation: str | None
    target: str
    n_units: int | None
    unit_dim: int | None = 1
    activation_fn: object = None

    @property
    def ranges_after(self) -> str:
        """What the unit ranges are measured on, in words (the probe prints it and writes it beside its rows)."""
        if self.activation is not None:
            return f"activation module {self.activation!r}"
        if self.activation_fn is not None:
            fn = self.activation_fn
            name = getattr(fn, "__name__", None)
            return f"activation_fn {getattr(fn, '__module__', None) or '?'}.{name}" if name else f"activation_fn {fn!r}"
        return OWN_OUTPUT

    @property
    def units(self) -> str:
        """The unit axis in words."""
        axis = {-1: "features (the output's last axis)", 1: "channels (axis 1)", None: "axis 1"}
        return axis.get(self.unit_dim, f"axis {self.unit_dim}")

    def cut(self, model: nn.Module):
        """(trunk, tail, ranges_of) of a Sequential model at the target, or None when it is not one."""
        parts = sequential_parts(model)
        names = [n for n, _ in parts] if parts is not None else []
        if self.target not in names:
            return None
        k = names.index(self.target)
        trunk, tail = nn.Sequential(*[m for _, m in parts[: k + 1]]), nn.Sequential(*[m for _, m in parts[k + 1:]])
        return trunk, tail, self.ranges_module(model)  # the named activation, as HookSweep's (not always tail[0])

    def ranges_module(self, model: nn.Module):
        """What turns the target's output into the values the ranges are measured on (None: the output itself)."""
        if self.target != self.layer:  # post_activation: the target is the activation
            return None
        if self.activation is not None:
            return model.get_submodule(self.activation)
        return self.activation_fn



def locate(model: nn.Module, layer: str, site: str = "pre_activation", activation: str | None = None,
           sample: torch.Tensor | None = None, activation_fn=None, unit_dim: int | None = None) -> ProbeSite:
    """Resolve `layer` (and the activation after it) in `model`.

    The activation is `activation` when named, else (without `activation_fn`) the module called right
    after `layer` (past dropout and identity modules) when it is an elementwise activation: the next
    entries of a Sequential, or, for any other model, the next leaf modules that a forward pass on
    `sample` calls. `activation_fn` (e.g. torch.relu) is applied to the layer's output to measure the
    unit ranges when the model calls its activation as a function.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> locate(net, "0", "post_activation")  # doctest: +NORMALIZE_WHITESPACE
        ProbeSite(layer='0', site='post_activation', activation='1', target='1', n_units=3, unit_dim=-1,
                  activation_fn=None)
    """
    modules = dict(model.named_modules())
    for what, name in (("layer", layer), ("activation", activation)):
        if name is not None and (name not in modules or not name):
            names = [n for n in modules if n]
            listed = ", ".join(names[:25]) + (f", ... ({len(names)} in all)" if len(names) > 25 else "")
            raise ProbeError(f"{what}={name!r} is not a submodule of {type(model).__name__}; its modules: {listed}. "
                             f"Name one of them, e.g. {what}={names[0]!r}." if names else
                             f"{type(model).__name__} has no submodules to probe.")
    if site not in ("pre_activation", "post_activation"):
        raise ProbeError(f"site={site!r}; accepted: pre_activation (USE's scale, clip, offset) or post_activation "
                         "(LEARN's clamp_min, clamp_max).")
    if activation_fn is not None:
        if activation is not None or not callable(activation_fn):
            raise ProbeError(f"activation_fn={activation_fn!r}: pass a callable (e.g. torch.relu), and not together "
                             f"with activation={activation!r}; one says what the ranges are measured after.")
        if site == "post_activation":
            raise ProbeError("site=post_activation perturbs an activation module's output, and activation_fn is a "
                             "function the probe cannot hook: make the activation a module (nn.ReLU() in place of "
                             "F.relu) and name it, activation=<name>.")
    if activation is None and activation_fn is None:
        parts = sequential_parts(model)
        names = [n for n, _ in parts] if parts is not None else []
        if layer in names:
            order = names
        else:
            order = call_order(model, sample) if sample is not None else []
        after = order[order.index(layer) + 1:] if layer in order else []
        while after and isinstance(modules[after[0]], PASS_THROUGH):
            after = after[1:]
        activation = after[0] if after and is_activation(modules[after[0]]) else None
        if activation is not None and order.count(activation) > 1:
            raise ProbeError(f"the activation after {layer!r}, {activation!r}, is called {order.count(activation)} "
                             "times per forward pass; give each use its own module, or name it: activation=<name>.")
    target = activation if site == "post_activation" and activation is not None else layer
    base = modules[layer]
    n_units = getattr(base, "out_features", None) or getattr(base, "out_channels", None)
    return ProbeSite(layer, site, activation, target, n_units, unit_dim_of(base, unit_dim), activation_fn)
