"""The papers' grid, torch-free: which (arch, activation, head_bias) points exist and their paper names.

dmlight/models/networks.py builds a network for any point; the config and the command line check names
(and `arch.hidden`, the hidden layers' widths) here before anything heavy is imported.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from omegaconf import ListConfig

from dmlight.errors import ConfigError

# activation name -> the papers' name for it (dmlight/models/networks.py maps each to its torch module)
ACTIVATION_NAMES = {"relu": "ReLU", "abs": "Abs", "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "GELU",
                    "leaky_relu": "LeakyReLU"}


@dataclass(frozen=True)
class Arch:
    head: str  # "linear" or "offset_l2"
    output_activation: bool
    neg: bool
    name_pattern: str  # "{act}" is replaced by the activation's paper name


ARCHS = {
    "mlp": Arch("linear", False, False, "{act}"),
    "mlp2": Arch("linear", True, False, "{act}2"),
    "mlp2_neg": Arch("linear", True, True, "{act}2-Neg"),
    "offset_l2": Arch("offset_l2", False, False, "{act}-L2"),
    "offset_l2_neg": Arch("offset_l2", False, True, "{act}-L2-Neg"),
}

SITES = ("pre_activation", "post_activation")


def check(kind: str, value, accepted) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {kind} {value!r}; accepted: {', '.join(map(str, accepted))}. "
                          f"Pick one on the command line, e.g. {kind}={list(accepted)[0]}")


HIDDEN_ACCEPTED = ("accepted: a whole number >= 1 (one hidden layer's width) or a non-empty list of them (one per "
                   "hidden layer), e.g. arch.hidden=128 or arch.hidden=[128,128]")


def hidden_widths(hidden) -> tuple[int, ...]:
    """The widths of the hidden layers `arch.hidden` asks for: an int is one layer, a list one per layer.

    Example:
        >>> hidden_widths(128), hidden_widths([128, 64])
        ((128,), (128, 64))
    """
    def whole(v) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    if whole(hidden):
        return (int(hidden),)
    if isinstance(hidden, (list, tuple, ListConfig)):
        values = list(hidden)
        bad = [(i, v) for i, v in enumerate(values) if not whole(v)]
        if values and not bad:
            return tuple(int(v) for v in values)
        shown = "[" + ",".join(map(str, values)) + "]"
        why = "an empty list has no hidden layer" if not values else \
            f"hidden layer {bad[0][0] + 1}'s width {bad[0][1]!r} is not a whole number >= 1"
        raise ConfigError(f"arch.hidden={shown}: {why}; {HIDDEN_ACCEPTED}")
    raise ConfigError(f"arch.hidden={hidden!r}; {HIDDEN_ACCEPTED}")


def hidden_setting(hidden) -> int | list[int]:
    """`arch.hidden` in its one spelling: an int for one hidden layer (`[128]` is 128), a list for several.

    Example:
        >>> hidden_setting([128]), hidden_setting((64, 32))
        (128, [64, 32])
    """
    widths = hidden_widths(hidden)
    return widths[0] if len(widths) == 1 else list(widths)


def paper_name(arch: str, activation: str, head_bias: bool, hidden=None) -> str:
    """The papers' name for a grid point; a net of several hidden layers (`hidden`, see hidden_widths) gets
    their widths appended, so that it never pools with a paper model's runs.

    Example:
        >>> paper_name("mlp2_neg", "relu", False), paper_name("mlp", "abs", True)
        ('ReLU2-Neg', 'Abs_Bias')
        >>> paper_name("mlp", "relu", False, [64, 32])
        'ReLU_64x32'
    """
    check("arch", arch, ARCHS)
    check("activation", activation, ACTIVATION_NAMES)
    name = ARCHS[arch].name_pattern.format(act=ACTIVATION_NAMES[activation])
    widths = hidden_widths(128 if hidden is None else hidden)
    return name + ("_Bias" if head_bias else "") + ("_" + "x".join(map(str, widths)) if len(widths) > 1 else "")
