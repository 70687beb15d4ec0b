"""Build any network of both papers from (arch, activation, head_bias, hidden).

Every paper model is one point of that grid, never its own class:

    arch           network (after Linear(784, hidden) -> act)
    mlp            -> Linear(hidden, 10)                      ReLU, Abs
    mlp2           -> Linear(hidden, 10) -> act               ReLU2, Abs2
    mlp2_neg       -> Linear(hidden, 10) -> act -> Neg        ReLU2-Neg, Abs2-Neg
    offset_l2      -> OffsetL2(hidden, 10)                    ReLU-L2, Abs-L2
    offset_l2_neg  -> OffsetL2(hidden, 10) -> Neg             ReLU-L2-Neg, Abs-L2-Neg

`head_bias=True` gives the head Linear a bias and appends "_Bias" to the name (the USE
models and LEARN's bias ablation). `hidden` is one width (the papers') or a list of widths,
one Linear -> act per layer (`hidden`, `activation`, `hidden2`, `activation2`, ...); such a
deeper net's name ends in its widths ('ReLU2-Neg_64x32').
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dmlight.errors import ConfigError
from dmlight.models.grid import ACTIVATION_NAMES, ARCHS, SITES, check, hidden_widths, paper_name  # noqa: F401  (re-exported)
from dmlight.models.layers import Abs, Neg, OffsetL2
from dmlight.targets import ARCH_KEYS, call_target, target_of, user_model_name

_MODULES = {"relu": nn.ReLU, "abs": Abs, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
            "leaky_relu": nn.LeakyReLU}
# activation name -> (the papers' name, its torch module); the names live in dmlight/models/grid.py
ACTIVATIONS = {name: (paper, _MODULES[name]) for name, paper in ACTIVATION_NAMES.items()}


def layer_names(depth: int) -> list[tuple[str, str]]:
    """(Linear, activation) names of each hidden layer: ('hidden', 'activation'), then ('hidden2', 'activation2'), ...

    Example:
        >>> layer_names(3)
        [('hidden', 'activation'), ('hidden2', 'activation2'), ('hidden3', 'activation3')]
    """
    return [(f"hidden{k or ''}", f"activation{k or ''}") for k in [0, *range(2, depth + 1)]]


class Network(nn.Sequential):
    """(Linear -> act) per hidden layer -> head -> act? -> Neg?, with named parts.

    Parts are reachable by name: `hidden`, `activation`, then `hidden2`, `activation2`, ... for
    each further hidden layer (`widths`: their widths), `head`, `output_activation`, `neg`.
    `site` says where dmlight's probe (dmlight.perturbation.probe) perturbs it: a hidden Linear's output
    (pre_activation, USE) or its activation's (post_activation, LEARN); `perturbation.layer`
    picks the layer (default `hidden`).
    """

    def __init__(self, arch: str, activation: str, head_bias: bool, hidden: int | Sequence[int] = 128,
                 in_features: int = 784, n_classes: int = 10, site: str = "pre_activation"):
        check("arch", arch, ARCHS)
        check("activation", activation, ACTIVATIONS)
        check("perturbation site", site, SITES)
        widths = hidden_widths(hidden)
        spec = ARCHS[arch]
        if spec.head == "offset_l2" and head_bias:
            raise ConfigError(f"arch {arch!r} has no bias (OffsetL2 is a distance layer); "
                              "set arch.head_bias=false")
        act_cls = ACTIVATIONS[activation][1]
        # Built in call order, so one hidden layer draws its initial weights exactly as the papers' nets always did.
        parts: list[tuple[str, nn.Module]] = []
        width_in = in_features
        for (linear, act), width in zip(layer_names(len(widths)), widths):
            parts += [(linear, nn.Linear(width_in, width)), (act, act_cls())]
            width_in = width
        if spec.head == "linear":
            parts.append(("head", nn.Linear(width_in, n_classes, bias=head_bias)))
        else:
            parts.append(("head", OffsetL2(width_in, n_classes)))
        if spec.output_activation:
            parts.append(("output_activation", act_cls()))
        if spec.neg:
            parts.append(("neg", Neg()))
        super().__init__(OrderedDict(parts))
        self.arch, self.activation_name, self.head_bias = arch, activation, head_bias
        self.widths, self.site = widths, site
        self.name = paper_name(arch, activation, head_bias, widths)

    def activation_layers(self) -> dict[str, nn.Module]:
        """The layers whose outputs count for dead units: every hidden layer's activation, `output_activation`."""
        watched = {act for _, act in layer_names(len(self.widths))} | {"output_activation"}
        return {n: m for n, m in self.named_children() if n in watched}


def build_model(arch: str, activation: str, head_bias: bool = False, hidden: int | Sequence[int] = 128,
                in_features: int = 784, n_classes: int = 10,
                site: str = "pre_activation") -> Network:
    """Build one paper model (or a deeper one: `hidden` a list of widths); its `.name` is the paper's name.

    Example:
        >>> net = build_model("mlp2_neg", "abs")
        >>> net.name, net(torch.zeros(2, 784)).shape
        ('Abs2-Neg', torch.Size([2, 10]))
        >>> deep = build_model("mlp", "relu", hidden=[64, 32])
        >>> deep.name, [n for n, _ in deep.named_children()]
        ('ReLU_64x32', ['hidden', 'activation', 'hidden2', 'activation2', 'head'])
    """
    return Network(arch, activation, head_bias, hidden, in_features, n_classes, site)


def model_from_config(cfg, in_features: int = 784, n_classes: int = 10) -> nn.Module:
    """The network a dmlight config describes (its `arch` and `activation`), freshly initialised; for a
    user's own network (`arch._target_`, dmlight.targets) its target's module, with `in_features`,
    `n_classes` (the data's) and the config's `.name` and `.site`.

    Example:
        >>> model_from_config(compose_config(["experiment=learn_distance_metrics", "arch=mlp2"])).name  # doctest: +SKIP
        'ReLU2'
    """
    if target_of(cfg.arch):
        check("perturbation site", cfg.arch.site, SITES)
        net = call_target("arch", cfg.arch, ARCH_KEYS, in_features=in_features, n_classes=n_classes)
        if not isinstance(net, nn.Module):
            raise ConfigError(f"arch._target_={target_of(cfg.arch)} returned {type(net).__name__}, not a "
                              "torch.nn.Module; return the network itself.")
        net.name, net.site = user_model_name(cfg.arch), cfg.arch.site
        return net
    return build_model(cfg.arch.name, cfg.activation.name, cfg.arch.head_bias, cfg.arch.hidden, in_features,
                       n_classes, site=cfg.arch.site)


@torch.no_grad()
def unit_counts(net: Network, x: torch.Tensor, dead_tol: float = 1e-6, rare_fraction: float = 0.01,
                return_output: bool = False):
    """Dead and rarely-active units of each activation layer (Network.activation_layers) on inputs `x`.

    dead: |activation| <= 1e-6 on every sample. rare: active (above that) on at least one
    sample but on fewer than 1% of them; dead units are not counted as rare. With
    `return_output`, also the network's output on `x` (the same forward pass).

    Example:
        >>> unit_counts(build_model("mlp2", "relu"), torch.zeros(8, 784))["activation"]["n"]
        128
    """
    if not isinstance(net, Network):  # a user's network (arch._target_): which of its parts are activations is unknown
        return ({}, net(x)) if return_output else {}
    counts, h = {}, x
    watched = net.activation_layers()
    for name, layer in net.named_children():
        h = layer(h)
        if name in watched:
            active = (h.abs() > dead_tol).float().mean(0)
            dead = int((active == 0).sum())
            rare = int(((active > 0) & (active < rare_fraction)).sum())
            counts[name] = {"n": h.shape[1], "dead": dead, "rare": rare}
    return (counts, h) if return_output else counts
