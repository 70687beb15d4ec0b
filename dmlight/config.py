"""Config helpers shared by the entry points: the paper-name resolver and composing configs.

Importing this module registers `${paper_name:arch,activation,head_bias}`, which the run
directory pattern in conf/config.yaml uses.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dmlight.models import paper_name

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"



def _dir_name(arch: str, activation: str, head_bias) -> str:
    # A bad name must not fail inside Hydra's path interpolation (its error there is
    # unreadable); the model builder reports it properly a moment later.
    try:
        return paper_name(arch, activation, str(head_bias).lower() == "true")
    except ValueError:
        return f"invalid-{arch}-{activation}"


def _n_jobs(cpu_jobs=2) -> int:
    from dmlight.devices import default_n_jobs

    return default_n_jobs(int(cpu_jobs))


def _seed_dir(seed, seeds) -> str:
    # An ensemble's own directory holds only Hydra's files; its members live in seed<s>/.
    if seeds is None:
        return f"seed{seed}"
    seeds = [int(s) for s in seeds]
    return f"ensemble-seeds{seeds[0]}-{seeds[-1]}-n{len(seeds)}"


for _name, _fn in (("paper_name", _dir_name), ("dmlight_n_jobs", _n_jobs), ("seed_dir", _seed_dir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def model_name(cfg: DictConfig) -> str:
    """The paper name of the model a config trains, e.g. 'ReLU2-Neg'."""
    return paper_name(cfg.arch.name, cfg.activation.name, bool(cfg.arch.head_bias))


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose dmlight's config the way `python -m dmlight.train` would, for notebooks and tests.

    Example:
        >>> cfg = compose_config(["experiment=learn_distance_metrics", "arch=mlp2_neg"])
        >>> model_name(cfg), cfg.trainer.max_epochs
        ('ReLU2-Neg', 5000)
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []),
                       return_hydra_config=False)
