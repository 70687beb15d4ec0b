"""The papers' grid, torch-free: which (arch, activation, head_bias) points exist and their paper names.

dmlight/models.py builds a network for any point; the config and the command line check names
here before anything heavy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

from dmlight.errors import ConfigError

# activation name -> the papers' name for it (dmlight/models.py maps each to its torch module)
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


def paper_name(arch: str, activation: str, head_bias: bool) -> str:
    """The papers' name for a grid point.

    Example:
        >>> paper_name("mlp2_neg", "relu", False), paper_name("mlp", "abs", True)
        ('ReLU2-Neg', 'Abs_Bias')
    """
    check("arch", arch, ARCHS)
    check("activation", activation, ACTIVATION_NAMES)
    name = ARCHS[arch].name_pattern.format(act=ACTIVATION_NAMES[activation])
    return name + ("_Bias" if head_bias else "")
