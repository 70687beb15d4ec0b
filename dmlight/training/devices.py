"""Which device a job trains on: one GPU per parallel job, pinned without the user's help.

`hydra/launcher=gpus` starts one job per visible GPU (joblib processes). Each job claims a
free GPU slot with a file lock for as long as it runs, so two running jobs never share a GPU
even when jobs finish out of order. On a CPU-only machine the same launcher runs `n_jobs`
CPU jobs, splitting the cores between them.
"""
from __future__ import annotations

import fcntl
import time
from pathlib import Path


def visible_gpus() -> int:
    """How many CUDA devices this process can see (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_n_jobs(cpu_jobs: int = 2) -> int:
    """Parallel jobs for `hydra/launcher=gpus`: one per GPU, else `cpu_jobs`.

    Example:
        >>> default_n_jobs(3) >= 1
        True
    """
    return visible_gpus() or int(cpu_jobs)


class GpuSlot:
    """Claims one of `n_gpus` slots (a GPU index) for the life of a job.

    Example:
        >>> with GpuSlot(2, "/tmp/slots") as gpu:  # doctest: +SKIP
        ...     trainer = pl.Trainer(accelerator="gpu", devices=[gpu])
    """

    def __init__(self, n_gpus: int, lock_dir: str | Path, poll_s: float = 0.5, say=print):
        self.n, self.dir, self.poll_s, self.say = int(n_gpus), Path(lock_dir), poll_s, say
        self.file = None
        self.index: int | None = None

    def _try(self, i: int) -> bool:
        f = open(self.dir / f"gpu{i}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self.file, self.index = f, i
        return True

    def __enter__(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            if any(self._try(i) for i in range(self.n)):
                return self.index
            if not waited:
                self.say(f"all {self.n} GPU slots in {self.dir} are busy; waiting for one to free up")
                waited = True
            time.sleep(self.poll_s)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def pin_trainer(trainer: dict, gpu: int) -> dict:
    """Trainer arguments for a single-device job pinned to GPU `gpu`."""
    return {**trainer, "accelerator": "gpu", "devices": [gpu]}


def wants_pinning(trainer: dict, n_gpus: int, parallel: bool) -> bool:
    """Pin only parallel single-device jobs that would use a GPU anyway.

    Example:
        >>> wants_pinning({"accelerator": "auto", "devices": 1}, n_gpus=4, parallel=True)
        True
        >>> wants_pinning({"accelerator": "gpu", "devices": -1, "strategy": "ddp"}, 4, True)
        False
    """
    return (parallel and n_gpus > 0 and trainer.get("accelerator") in ("auto", "gpu", "cuda")
            and trainer.get("devices") in (1, "1", None))


def usable_cores() -> int:
    """The cores this process may run on, not the node's: its CPU affinity (taskset, SLURM's --cpus-per-task
    cpuset) and its cgroup CPU quota (a container's), counted as joblib counts them for its own workers."""
    import joblib  # hydra-joblib-launcher's dependency; imported where parallel jobs start

    return max(1, int(joblib.cpu_count()))


def cpu_threads_per_job(n_jobs: int) -> int:
    """Usable cores split evenly between parallel CPU jobs, so they do not oversubscribe.

    Example:
        >>> cpu_threads_per_job(10 ** 6)
        1
    """
    return max(1, usable_cores() // max(1, int(n_jobs)))
