"""A user's own data set or network by import path: `_target_` in a `data` or `arch` config (Hydra's idiom).

    # my_conf/data/blobs.yaml                    # my_conf/arch/my_mlp.yaml
    name: blobs                                  name: my_mlp_${activation.name}
    _target_: my_project.data.load_blobs         _target_: my_project.nets.make_mlp
    n_train: 900                                 width: 64

dmlight calls the target with the keys of that config that are not dmlight's own (`DATA_KEYS`,
`ARCH_KEYS`); a network's target also gets `in_features` and `n_classes`, read from the data.
Torch-free: the entry points check a target's module before torch loads (`check_targets`).
"""
from __future__ import annotations

import importlib.util
import sys

from omegaconf import DictConfig, OmegaConf

from dmlight.errors import ConfigError

# Keys dmlight's own configs give every data set and every arch (conf/config.yaml); not passed to a target.
DATA_KEYS = ("name", "preprocess", "data_dir", "download", "download_timeout", "batch_size", "shuffle_seed")
ARCH_KEYS = ("name", "head_bias", "hidden", "site")
ACCEPTED = {
    "data": "an import path (module.function or module.Class) whose call returns (x_train, y_train, x_test, y_test) "
            "arrays or tensors, a dmlight.data.datasets.Splits, or a LightningDataModule with train and test dataloaders",
    "arch": "an import path (module.function or module.Class) whose call, with in_features=, n_classes= and your "
            "arch keys, returns a torch.nn.Module mapping (n, in_features) inputs to (n, n_classes) logits",
}


def target_of(node) -> str | None:
    """The `_target_` of a config node, or None for dmlight's own data sets and networks."""
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    return str(target) if target else None


def user_model_name(arch) -> str:
    """The name of a user's network: its config's `arch.name`, a folder name of the run's path."""
    name = str(arch.get("name") or "")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ConfigError(f"arch.name={name!r} names the run's folder of arch._target_={target_of(arch)}; accepted: a "
                          "non-empty name without slashes or spaces, e.g. name: my_mlp_${activation.name}")
    return name


def _where(group: str, target: str) -> str:
    return f"{group}._target_={target}"


def check_target(group: str, target: str) -> None:
    """Fail with a ConfigError naming `target` unless its module can be found (without importing the module
    itself; its parent packages are imported, as Python must to find it)."""
    module, _, attr = target.rpartition(".")
    hint = (f"accepted: {ACCEPTED[group]}. Check the spelling, and that its package is importable here "
            "(pip install it, or add its folder to PYTHONPATH).")
    if not module or not attr:
        raise ConfigError(f"{_where(group, target)} is not an import path; {hint}")
    if module in sys.modules:  # imported already (a notebook's or a test's own module)
        return
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError as e:  # a parent package is missing
        raise ConfigError(f"{_where(group, target)}: no module named {e.name!r}; {hint}") from None
    except (ImportError, ValueError) as e:
        raise ConfigError(f"{_where(group, target)}: cannot import {module!r} ({type(e).__name__}: {e}); "
                          f"{hint}") from None
    if found is None:
        raise ConfigError(f"{_where(group, target)}: no module named {module!r}; {hint}")


def check_targets(cfg: DictConfig) -> None:
    """Check the `_target_` of `cfg.data` and `cfg.arch` (before torch loads); a user's network trains one
    seed at a time (dmlight's stacked ensembles know only its own networks' parts)."""
    for group in ("data", "arch"):
        target = target_of(cfg.get(group))
        if target:
            check_target(group, target)
    if target_of(cfg.arch) and cfg.get("seeds") is not None:
        raise ConfigError(f"seeds={list(cfg.seeds)} trains a stacked ensemble of dmlight's own networks; "
                          f"arch._target_={target_of(cfg.arch)} is a network of yours. Sweep its seeds as "
                          "separate runs instead: -m seed=0,1,2")


def call_target(group: str, node: DictConfig, reserved: tuple[str, ...], **kwargs):
    """Call the `_target_` of `node` with its keys other than `reserved`, and `kwargs`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = target_of(node)
    check_target(group, target)
    spec = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in reserved}
    try:
        return instantiate(spec, **kwargs, _convert_="all")
    except InstantiationException as e:
        raise ConfigError(f"{_where(group, target)}: {' '.join(str(e).split())[:400]}; accepted: "
                          f"{ACCEPTED[group]}.") from None
