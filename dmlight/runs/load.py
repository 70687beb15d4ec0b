"""Load a trained run for analysis: `load_run(run_dir)` gives its model, config, summary and data."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from dmlight.data.datasets import load_data_cfg
from dmlight.errors import RunDirError
from dmlight.models.networks import model_from_config
from dmlight.targets import target_of
from dmlight.runs.files import last_checkpoint, read_config, read_json, summary_path


class Run:
    """A finished (or checkpointed) run, loaded for analysis: `.model`, `.cfg`, `.summary`, `.data()`."""

    def __init__(self, run_dir: Path, cfg: DictConfig, model: torch.nn.Module, summary: dict | None,
                 splits=None):
        self.run_dir, self.cfg, self.model, self.summary = run_dir, cfg, model, summary
        self._splits = splits  # a user's data set, already loaded to size the network

    def data(self, device="cpu"):
        """(x_train, y_train, x_test, y_test), preprocessed exactly as in training."""
        splits = self._splits if self._splits is not None else load_data_cfg(self.cfg.data)
        return splits.to(device).as_tuple()

    def __repr__(self) -> str:
        status = "complete" if self.summary else "incomplete"
        return f"Run({self.model.name}, seed={self.cfg.seed}, {status}, {self.run_dir})"


def load_run(run_dir: str | Path, require_complete: bool = True) -> Run:
    """Load a run directory: the trained network (eval mode, CPU), its config and summary.

    Example:
        >>> run = load_run("outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")  # doctest: +SKIP
        >>> x_train, y_train, x_test, y_test = run.data()                                           # doctest: +SKIP
        >>> (run.model(x_test).argmax(1) == y_test).float().mean()                                 # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if cfg is None:
        why = "does not exist" if not run_dir.exists() else "is not a dmlight run directory (no config.yaml)"
        raise RunDirError(f"run_dir={run_dir} {why}. Pass a directory made by `python -m dmlight.train`, "
                          "e.g. outputs/use_distance_metrics/mnist5k-raw/ReLU_Bias/seed0")
    summary = read_json(summary_path(run_dir))
    ckpt = last_checkpoint(run_dir)
    if (require_complete and not (summary and summary.get("status") == "complete")) or ckpt is None:
        raise RunDirError(f"run_dir={run_dir} holds no complete run (no summary.json with status complete, or "
                          "no checkpoints/last.ckpt): it crashed, diverged or is still training. Rerun its "
                          "training command to finish it" + (", or pass require_complete=False to load its "
                                                             "last checkpoint." if ckpt else "."))
    # dmlight's own sets are MNIST-shaped; a user's (data._target_) is loaded once, to size the network and for data()
    splits = load_data_cfg(cfg.data) if target_of(cfg.data) else None
    model = model_from_config(cfg, *(splits.sizes() if splits is not None else (784, 10)))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return Run(run_dir, cfg, model.eval(), summary, splits)
