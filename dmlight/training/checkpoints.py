"""Checkpoints of dmlight runs: one `checkpoints/last.ckpt` per run directory, through Lightning's
CheckpointIO plugin interface.

An ensemble's Lightning checkpoint holds stacked parameters and optimizer state; `MemberCheckpoints`
writes it as one file per member, each exactly what that member's solo run would write (keys
`net.<param>`), so a solo rerun, `load_run` or a resumed ensemble reads it as its own. Loading
joins the members' files again. `trainer.save_checkpoint(...)` and `trainer.fit(ckpt_path=...)`
work as Lightning users know them: the path names the first member's file (`member_paths` the others').
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from dmlight.runs.files import last_checkpoint_path, status


class MemberCheckpoints(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes and reads each member's own `last.ckpt`, atomically.

    A member whose run directory already has a summary (it diverged) is finished: its file is
    never written again. Example:
        >>> pl.Trainer(plugins=[MemberCheckpoints(run_dirs)])  # doctest: +SKIP
    """

    def __init__(self, run_dirs: list[Path]):
        self.run_dirs = [Path(d) for d in run_dirs]

    def member_paths(self, path=None) -> list[Path]:
        """Where each member's file goes for the `path` Lightning passes: each run's checkpoints/last.ckpt when
        none; `path` itself for the first member, and for the others the same place relative to their own run
        directory (when `path` lies in the first one's) or `<stem>.member<k><suffix>` beside it.

        Example:
            >>> io = MemberCheckpoints(["r/seed3", "r/seed5"])
            >>> [p.as_posix() for p in io.member_paths("r/seed3/checkpoints/epoch9.ckpt")]
            ['r/seed3/checkpoints/epoch9.ckpt', 'r/seed5/checkpoints/epoch9.ckpt']
            >>> [p.as_posix() for p in io.member_paths("/tmp/x.ckpt")]
            ['/tmp/x.ckpt', '/tmp/x.member1.ckpt']
        """
        if path is None:
            return [last_checkpoint_path(d) for d in self.run_dirs]
        path = Path(path)
        try:
            inside = path.resolve().relative_to(self.run_dirs[0].resolve())
        except ValueError:
            inside = None
        if inside is not None:
            return [path] + [d / inside for d in self.run_dirs[1:]]
        return [path] + [path.with_name(f"{path.stem}.member{k}{path.suffix}") for k in range(1, len(self.run_dirs))]

    def save_checkpoint(self, checkpoint: dict, path=None, storage_options=None) -> None:
        parts = [checkpoint] if len(self.run_dirs) == 1 else split_checkpoint(checkpoint, len(self.run_dirs))
        for run_dir, part, target in zip(self.run_dirs, parts, self.member_paths(path)):
            if status(run_dir) is not None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            torch.save(part, tmp)
            os.replace(tmp, target)

    def load_checkpoint(self, path=None, map_location=None, weights_only=None) -> dict:
        # dmlight.train checked that every member has a file from the same epoch.
        states = [torch.load(p, map_location="cpu", weights_only=False) for p in self.member_paths(path)]
        return states[0] if len(states) == 1 else join_checkpoints(states)

    def remove_checkpoint(self, path) -> None:
        for target in self.member_paths(path):
            target.unlink(missing_ok=True)


def split_checkpoint(ckpt: dict, n_members: int) -> list[dict]:
    """An ensemble's Lightning checkpoint as one solo checkpoint per member.

    Each member file is what its solo run would have written (keys `net.<param>`), so a solo
    rerun or load_run reads it as its own.
    """
    out = []
    for i in range(n_members):
        member = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
        member["state_dict"] = {k.replace("__", "."): v[i].clone() for k, v in ckpt["state_dict"].items()}
        member["optimizer_states"] = [_map_optimizer_state(s, lambda t: t[i].clone())
                                      for s in ckpt.get("optimizer_states", [])]
        out.append(member)
    return out


def join_checkpoints(members: list[dict]) -> dict:
    """The inverse of split_checkpoint: member checkpoints as one ensemble checkpoint."""
    joined = {k: v for k, v in members[0].items() if k not in ("state_dict", "optimizer_states")}
    joined["state_dict"] = {k.replace(".", "__").replace("net__", "net.", 1):
                            torch.stack([m["state_dict"][k] for m in members])
                            for k in members[0]["state_dict"]}
    joined["optimizer_states"] = []
    for j, state in enumerate(members[0].get("optimizer_states", [])):
        per = [m["optimizer_states"][j] for m in members]
        joined["optimizer_states"].append(_map_optimizer_state(
            state, None, stack=[p for p in per]))
    return joined


def _map_optimizer_state(state: dict, fn, stack: list[dict] | None = None) -> dict:
    """Apply `fn` to every tensor of an optimizer state (or stack the same tensor of `stack`)."""
    new = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {}}
    for idx, slots in state["state"].items():
        new["state"][idx] = {}
        for key, value in slots.items():
            if not torch.is_tensor(value) or value.ndim == 0:
                new["state"][idx][key] = value
            elif stack is not None:
                new["state"][idx][key] = torch.stack([s["state"][idx][key] for s in stack])
            else:
                new["state"][idx][key] = fn(value)
    return new
