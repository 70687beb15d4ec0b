"""Where a run lives: the one definition, torch-free.

    <paths.output_dir>/<experiment>/<data>-<preprocess>/<model>[/<variant>]/seed<s>

`variant` names the overrides that change a run's results and that the path does not already
spell out (e.g. `optimizer.lr=0.0022`), so every point of a sweep over any key gets its own
directory and the default config keeps its short path. An ensemble (`seeds=[...]`) runs in
`.../<model>[/<variant>]/ensemble-seeds<first>-<last>-n<k>` and puts each member where its solo
run lives, beside it (`.../seed<s>`). Given a directory of your own (`hydra.run.dir=D`, or
`train(cfg, D)`), an ensemble puts its members inside it, in `D/seed<s>`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

# Overrides the path spells out already (or that pick the path itself).
IN_PATH = {"experiment", "experiment_name", "data", "data.name", "data.preprocess", "arch", "arch.name",
           "arch.head_bias", "activation", "activation.name", "seed", "seeds", "variant"}
# Overrides that change no result file: where and how a run is written, logged and placed on a device.
NEUTRAL = {"logger", "trainer", "trainer.accelerator", "trainer.devices", "data.data_dir", "data.download",
           "data.download_timeout"}
NEUTRAL_PREFIXES = ("paths.", "run.", "logger.", "hydra.", "hydra/")
MAX_VARIANT = 120  # longer names end in a hash: file systems cap a name at 255 bytes


def variant_name(overrides) -> str:
    """The directory level for a list of command-line overrides ('' when none changes results).

    Example:
        >>> variant_name(["seed=3", "optimizer.lr=0.0022", "trainer.max_epochs=100", "run.progress_every=0"])
        'optimizer.lr=0.0022,trainer.max_epochs=100'
    """
    parts = []
    for override in overrides or ():
        key, _, value = str(override).lstrip("+~").partition("=")
        if key in IN_PATH or key in NEUTRAL or key.startswith(NEUTRAL_PREFIXES):
            continue
        parts.append(f"{key}={value}".replace("/", "-"))
    name = ",".join(sorted(parts))
    if len(name) > MAX_VARIANT:
        name = f"{name[:MAX_VARIANT - 13]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def seed_dir_name(seed, seeds=None) -> str:
    """`seed<s>` for a solo run; an ensemble's own directory for `seeds`."""
    if seeds is None:
        return f"seed{int(seed)}"
    seeds = [int(s) for s in seeds]
    return f"ensemble-seeds{seeds[0]}-{seeds[-1]}-n{len(seeds)}"


def run_subdir(data: str, preprocess: str, model: str, variant: str, seed, seeds=None) -> str:
    """The run's path below `<output_dir>/<experiment>/`.

    Example:
        >>> run_subdir("mnist5k", "raw", "ReLU", "", 3), run_subdir("mnist", "raw", "Abs", "optimizer=adam", 0, [0, 1])
        ('mnist5k-raw/ReLU/seed3', 'mnist-raw/Abs/optimizer=adam/ensemble-seeds0-1-n2')
    """
    parts = [f"{data}-{preprocess}", model, *([variant] if variant else []), seed_dir_name(seed, seeds)]
    return "/".join(parts)


def run_dir(cfg) -> Path:
    """The directory dmlight gives the run a composed config describes (without a Hydra override of it)."""
    return Path(cfg.paths.output_dir) / cfg.experiment_name / cfg.run_subdir


def member_dirs(job_dir: str | Path, seeds) -> dict[int, Path]:
    """Each ensemble member's run directory, for an ensemble job running in `job_dir`.

    Example:
        >>> member_dirs("out/e/mnist5k-raw/ReLU/ensemble-seeds3-7-n2", [3, 7])[7].as_posix()
        'out/e/mnist5k-raw/ReLU/seed7'
        >>> member_dirs("runs/x", [3, 7])[3].as_posix()
        'runs/x/seed3'
    """
    job_dir, seeds = Path(job_dir), [int(s) for s in seeds]
    home = job_dir.parent if job_dir.name == seed_dir_name(None, seeds) else job_dir
    return {s: home / seed_dir_name(s) for s in seeds}
