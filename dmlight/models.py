"""Build any network of both papers from (arch, activation, head_bias, hidden).

Every paper model is one point of that grid, never its own class:

    arch           network (after Linear(784, hidden) -> act)
    mlp            -> Linear(hidden, 10)                      ReLU, Abs
    mlp2           -> Linear(hidden, 10) -> act               ReLU2, Abs2
    mlp2_neg       -> Linear(hidden, 10) -> act -> Neg        ReLU2-Neg, Abs2-Neg
    offset_l2      -> OffsetL2(hidden, 10)                    ReLU-L2, Abs-L2
    offset_l2_neg  -> OffsetL2(hidden, 10) -> Neg             ReLU-L2-Neg, Abs-L2-Neg

`head_bias=True` gives the head Linear a bias and appends "_Bias" to the name (the USE
models and LEARN's bias ablation).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from dmlight.errors import ConfigError
from dmlight.grid import ACTIVATION_NAMES, ARCHS, SITES, check, paper_name  # noqa: F401  (re-exported)
from dmlight.layers import Abs, Neg, OffsetL2

_MODULES = {"relu": nn.ReLU, "abs": Abs, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
            "leaky_relu": nn.LeakyReLU}
# activation name -> (the papers' name, its torch module); the names live in dmlight/grid.py
ACTIVATIONS = {name: (paper, _MODULES[name]) for name, paper in ACTIVATION_NAMES.items()}


class Network(nn.Sequential):
    """Linear -> act -> head -> act? -> Neg?, with named parts.

    Parts are reachable by name: `hidden`, `activation`, `head`, `output_activation`, `neg`.
    `site` says where dmlight's probe (dmlight.probe) perturbs it: `hidden`'s output
    (pre_activation, USE) or `activation`'s (post_activation, LEARN).
    """

    def __init__(self, arch: str, activation: str, head_bias: bool, hidden: int = 128,
                 in_features: int = 784, n_classes: int = 10, site: str = "pre_activation"):
        check("arch", arch, ARCHS)
        check("activation", activation, ACTIVATIONS)
        check("perturbation site", site, SITES)
        spec = ARCHS[arch]
        if spec.head == "offset_l2" and head_bias:
            raise ConfigError(f"arch {arch!r} has no bias (OffsetL2 is a distance layer); "
                              "set arch.head_bias=false")
        act_cls = ACTIVATIONS[activation][1]
        parts: list[tuple[str, nn.Module]] = [("hidden", nn.Linear(in_features, hidden)), ("activation", act_cls())]
        if spec.head == "linear":
            parts.append(("head", nn.Linear(hidden, n_classes, bias=head_bias)))
        else:
            parts.append(("head", OffsetL2(hidden, n_classes)))
        if spec.output_activation:
            parts.append(("output_activation", act_cls()))
        if spec.neg:
            parts.append(("neg", Neg()))
        super().__init__(OrderedDict(parts))
        self.arch, self.activation_name, self.head_bias = arch, activation, head_bias
        self.hidden_units, self.site = hidden, site
        self.name = paper_name(arch, activation, head_bias)

    def activation_layers(self) -> dict[str, nn.Module]:
        """The layers whose outputs count for dead units: `activation`, `output_activation`."""
        return {n: m for n, m in self.named_children() if n in ("activation", "output_activation")}


def build_model(arch: str, activation: str, head_bias: bool = False, hidden: int = 128,
                in_features: int = 784, n_classes: int = 10,
                site: str = "pre_activation") -> Network:
    """Build one paper model; its `.name` is the paper's name.

    Example:
        >>> net = build_model("mlp2_neg", "abs")
        >>> net.name, net(torch.zeros(2, 784)).shape
        ('Abs2-Neg', torch.Size([2, 10]))
    """
    return Network(arch, activation, head_bias, hidden, in_features, n_classes, site)


def model_from_config(cfg) -> Network:
    """The network a dmlight config describes (its `arch` and `activation`), freshly initialised.

    Example:
        >>> model_from_config(compose_config(["experiment=learn_distance_metrics", "arch=mlp2"])).name  # doctest: +SKIP
        'ReLU2'
    """
    return build_model(cfg.arch.name, cfg.activation.name, cfg.arch.head_bias, cfg.arch.hidden, site=cfg.arch.site)


@torch.no_grad()
def unit_counts(net: Network, x: torch.Tensor, dead_tol: float = 1e-6, rare_fraction: float = 0.01,
                return_output: bool = False):
    """Dead and rarely-active units of each activation layer on inputs `x`.

    dead: |activation| <= 1e-6 on every sample. rare: active (above that) on at least one
    sample but on fewer than 1% of them; dead units are not counted as rare. With
    `return_output`, also the network's output on `x` (the same forward pass).

    Example:
        >>> unit_counts(build_model("mlp2", "relu"), torch.zeros(8, 784))["activation"]["n"]
        128
    """
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
