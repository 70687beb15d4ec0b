"""What produced a run's numbers: dmlight's version and commit, the library versions, the device.

Recorded in every summary.json (ensemble members too), logged to W&B's config, and tabled by the
report, so that two runs that disagree in the fourth decimal can be told apart.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from dmlight import __version__

REPO = Path(__file__).resolve().parents[2]  # dmlight/runs/provenance.py -> the checkout (or site-packages)
CHECKOUT, INSTALLED = "git checkout", "installed package (no git checkout: commit unknown)"


def source() -> str:
    """Where this dmlight runs from: its own git checkout (a clone, an editable install), or an installed wheel.
    An installed package's parent folder is site-packages, which may sit inside another project's git
    repository: that repository's commit is not dmlight's, so git is asked only in dmlight's own checkout."""
    own = (REPO / "pyproject.toml").is_file() and (REPO / "conf" / "config.yaml").is_file()
    return CHECKOUT if own and (REPO / ".git").exists() else INSTALLED


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout dmlight runs from; (None, None) outside one (see `source`)."""
    if source() != CHECKOUT:
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None, None
        # Tracked files only: run outputs and caches are ignored, and untracked files do not run.
        status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device) -> dict:
    """What produces this process's numbers on `device` (a torch device or its name).

    Example:
        >>> sorted(provenance("cpu"))  # doctest: +NORMALIZE_WHITESPACE
        ['device', 'device_name', 'dmlight', 'git_commit', 'git_dirty', 'lightning', 'python', 'source', 'torch',
         'torch_threads']
    """
    import pytorch_lightning as pl  # here, not at the top: dmlight.runs stays torch-free to import
    import torch

    device = torch.device(device)
    commit, dirty = git_state()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"dmlight": __version__, "source": source(), "git_commit": commit, "git_dirty": dirty, "torch": str(torch.__version__),
            "lightning": str(pl.__version__), "python": platform.python_version(), "device": str(device),
            "device_name": name, "torch_threads": torch.get_num_threads()}
