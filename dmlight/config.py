"""Config helpers shared by the entry points: the paper-name resolver and composing configs.

Importing this module registers the resolvers conf/config.yaml's run directory uses
(`dmlight_run_subdir`, `dmlight_variant`; the layout itself is dmlight/runs/layout.py).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from dmlight.runs import layout as rundir
from dmlight.models.grid import hidden_setting, paper_name
from dmlight.targets import target_of, user_model_name


def _conf_dir() -> Path:
    """dmlight's config folder: dmlight/conf inside an installed wheel (pyproject.toml ships the checkout's
    top-level conf/ there), else the checkout's conf/ (a clone or an editable install)."""
    package = Path(__file__).resolve().parent
    shipped = package / "conf"
    return shipped if (shipped / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()


def _model_dir(arch: str, activation: str, head_bias, hidden=None, target=None) -> str:
    # A bad name must not fail inside Hydra's path interpolation (its error there is
    # unreadable); the model builder reports it properly a moment later.
    try:
        if target:  # a user's own network (dmlight.targets)
            return user_model_name({"name": arch, "_target_": target})
        return paper_name(arch, activation, str(head_bias).lower() == "true", hidden)
    except ValueError:
        return f"invalid-{arch}-{activation}"


def _run_subdir(data, preprocess, arch, activation, head_bias, variant, seed, seeds, hidden=None,
                target=None) -> str:
    model = _model_dir(arch, activation, head_bias, hidden, target)
    return rundir.run_subdir(data, preprocess, model, variant or "", seed, seeds)


def _variant(*, _root_) -> str:
    """The overrides that name this run's variant (see dmlight.runs.layout): read from the config's
    hydra node while Hydra composes it, else from the running Hydra job."""
    overrides = OmegaConf.select(_root_, "hydra.overrides.task", default=None)
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return rundir.variant_name(overrides)


# The resolvers below import where they run (when a config resolves one), so that composing a config, --help and
# shell completion load neither torch nor wandb (tests/package/test_cli.py checks it).
def _n_jobs(cpu_jobs=2) -> int:
    from dmlight.training.devices import default_n_jobs

    return default_n_jobs(int(cpu_jobs))


def _use_table_grids(kind: str) -> list[float]:
    from dmlight.published import use_table_grids

    return use_table_grids()[kind]


def _wandb_mode() -> str:
    from dmlight.tracking.loggers import wandb_mode

    return wandb_mode()


for _name, _fn in (("dmlight_run_subdir", _run_subdir), ("dmlight_variant", _variant), ("dmlight_n_jobs", _n_jobs),
                   ("dmlight_wandb_mode", _wandb_mode), ("dmlight_use_table_grids", _use_table_grids)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def pin_variant(cfg: DictConfig) -> DictConfig:
    """Resolve `variant` once, while the overrides that name it are known, and keep it as a value."""
    with open_dict(cfg):
        cfg.variant = str(cfg.variant)
    return cfg


def model_name(cfg: DictConfig) -> str:
    """The paper name of the model a config trains, e.g. 'ReLU2-Neg' ('ReLU2-Neg_64x32' with arch.hidden=[64,32]);
    a user's network's `arch.name`. A bad arch, activation or arch.hidden is a ConfigError naming it."""
    if target_of(cfg.arch):  # a user's own network
        return user_model_name(cfg.arch)
    return paper_name(cfg.arch.name, cfg.activation.name, bool(cfg.arch.head_bias), cfg.arch.get("hidden"))


def settle_hidden(cfg: DictConfig) -> DictConfig:
    """Check `arch.hidden` and write it in its one spelling (an int for one layer: `[128]` is 128; a list for
    several), so that config.yaml, summary.json and a rerun's identity check agree however it was typed."""
    cfg.arch.hidden = hidden_setting(cfg.arch.hidden)
    return cfg


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose dmlight's config the way `python -m dmlight.train` would, for notebooks and tests.

    Example:
        >>> cfg = compose_config(["experiment=learn_distance_metrics", "arch=mlp2_neg"])
        >>> model_name(cfg), cfg.trainer.max_epochs
        ('ReLU2-Neg', 5000)
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    if "variant" in cfg:  # named by the overrides, which only the hydra node holds
        pin_variant(cfg)
    if "arch" in cfg and "hidden" in cfg.arch:
        settle_hidden(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
