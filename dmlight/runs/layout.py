"""Run directories, torch-free: where a run lives, what it holds, and how a rerun picks it up.

    <paths.output_dir>/<experiment>/<data>-<preprocess>/<model>[/<variant>]/seed<s>

`variant` names the overrides that change a run's results and that the path does not already
spell out (e.g. `optimizer.lr=0.0022`), so every point of a sweep over any key gets its own
directory and the default config keeps its short path. A net of several hidden layers has its
widths in its model name (`ReLU_128x128`, see dmlight.models.grid.paper_name), so `arch.hidden=[128,128]`
names no variant; one layer's width does, in one spelling (`arch.hidden=[64]` is `arch.hidden=64`).
An ensemble (`seeds=[...]`) runs in `.../<model>[/<variant>]/ensemble-seeds<first>-<last>-n<k>`
and puts each member where its solo run lives, beside it (`.../seed<s>`). Given a directory of your
own (`hydra.run.dir=D`, or `train(cfg, D)`), an ensemble puts its members inside it, in `D/seed<s>`.

What a run directory holds, file by file, is dmlight.runs.files'; this module decides where it is, whose
it is (claim_run_dir: a directory holds one config's run) and who writes it now (RunLock).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dmlight.errors import RunDirBusy, RunDirConflict
from dmlight.runs.files import CONFIG_FILE

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
        if key == "arch.hidden":
            value = _hidden_value(value)
            if value is None:
                continue
        parts.append(f"{key}={value}".replace("/", "-"))
    name = ",".join(sorted(parts))
    if len(name) > MAX_VARIANT:
        name = f"{name[:MAX_VARIANT - 13]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def _hidden_value(value: str) -> str | None:
    """An `arch.hidden` override's value in one spelling ('[64]' and ' 64' give '64'); None for several
    layers (the model name spells those out). A value that is no width list is kept as typed (the
    config check then names it)."""
    text = value.strip()
    items = text[1:-1].split(",") if text.startswith("[") and text.endswith("]") else [text]
    try:
        widths = [int(item) for item in items]
    except ValueError:
        return value
    return None if len(widths) > 1 else str(widths[0])


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


# Config keys that decide a run's numbers; two configs that agree on these are the same run.
IDENTITY_KEYS = ("experiment_name", "seed", "data.name", "data.preprocess", "data.batch_size",
                 "data.shuffle_seed", "data.n_train", "data.n_test", "arch", "activation", "optimizer",
                 "trainer.max_epochs")


def identity(cfg: DictConfig) -> dict:
    """The part of a config that decides the numbers (see IDENTITY_KEYS)."""
    out = {}
    for key in IDENTITY_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if out["data.batch_size"] is None:  # full batch: no order to shuffle
        out["data.shuffle_seed"] = None
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def claim_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Make sure `run_dir` is this config's: new, or holding the same run. Writes config.yaml.

    A directory holding another config's run raises RunDirConflict naming the keys that differ.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        old = _flatten(identity(OmegaConf.load(saved)))
        new = _flatten(identity(cfg))
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:5])
            raise RunDirConflict(
                f"{run_dir} holds a run with another config ({shown}). Refusing to mix results: "
                "choose another directory (hydra.run.dir=... or experiment_name=...) or delete that one.")
    OmegaConf.save(cfg, saved, resolve=True)



class RunLock:
    """An exclusive lock on a run directory for as long as a job writes it.

    flock is released by the kernel when the holder dies, so a killed job never leaves a
    stale lock behind. Example:
        >>> with RunLock(Path("/tmp/some_run")):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirBusy(f"{self.path.parent} is being written by {holder}. Two jobs must not "
                             "write one run: wait for it, or kill it and rerun to resume.") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
