"""DistanceProbe: the papers' perturbation test for any Lightning model, at any layer, during training.

Does a layer code by distance or by intensity? The probe shifts the layer's units the
papers' ways (USE: scale, clip, offset; LEARN: clamp_min, clamp_max; dmlight.perturbation.formulas
holds the formulas) and measures how accuracy falls:

    from dmlight import DistanceProbe
    trainer = pl.Trainer(callbacks=[DistanceProbe(layer="features.0", every_n_epochs=5)])

- `layer` names any submodule (`model.named_modules()`); each unit is a Linear output's
  feature (its last axis: (n, seq, features) in a transformer too) or a conv map's channel
  (axis 1); `unit_dim=` for any other module. At the pre_activation site (USE's kinds) the
  layer's output is perturbed; at post_activation (LEARN's) the output of the activation
  that follows it. Unit ranges are measured on the training data at that activation's output
  (`activation_fn=` when the model calls it as a function); the probe says which, once.
- Sweeps the full grid when training ends, and with `every_n_epochs` also at epoch 0 and every
  N training epochs on the coarser `during_grids` (conf/perturbation/*.yaml).
- Writes rows with an `epoch` column to `<dirpath>/probe.csv` and logs each sweep's
  accuracies to every logger of the Trainer (`probe/<layer>/<split>/<kind>/<magnitude>`).

dmlight's own training uses it too (`PerturbationSweep`, one file per member run).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.seed import isolate_rng
from torch import nn

from dmlight.config import CONF_DIR, compose_config
from dmlight.tracking.loggers import member_loggers
from dmlight.perturbation.formulas import KINDS, check_unit, sweep_points, sweep_ranges, sweep_splits, unit_seed
from dmlight.runs.files import read_json, write_json_atomic
from dmlight.perturbation.site import OWN_OUTPUT, ProbeError, ProbeSite, locate  # noqa: F401  (ProbeError: re-exported)
from dmlight.perturbation.driver import site_sweeps, sweep_layers, sweep_rows
from dmlight.perturbation.engine import DEFAULT_CHUNK_ROWS
from dmlight.runs.files import (PERTURBATION_COLUMNS, PROBE_COLUMNS, append_results, layer_files, recorded_epochs,
                                write_unit_ranges)
from dmlight.tracking.wandb_log import log_sweep, sweep_metrics



def _config(perturbation) -> DictConfig:
    """A perturbation config: a conf/perturbation/<name>.yaml by name, or a mapping of its keys."""
    if isinstance(perturbation, str):
        names = sorted(p.stem for p in (CONF_DIR / "perturbation").glob("*.yaml") if p.stem != "base")
        if perturbation not in names:
            raise ProbeError(f"perturbation={perturbation!r}; accepted: {', '.join(names)}, or a mapping with kinds "
                             "and grids.")
        return compose_config([f"perturbation={perturbation}"]).perturbation
    # a copy: the probe sets its splits in it, and the caller's config stays as it was
    return perturbation.copy() if isinstance(perturbation, DictConfig) else OmegaConf.create(dict(perturbation))


def kinds_site(cfg) -> str:
    """The site every kind of `cfg` acts at (USE's: pre_activation; LEARN's: post_activation)."""
    sites = {KINDS.get(str(k), "?") for k in cfg.get("kinds") or []}
    if len(sites) != 1 or "?" in sites:
        sweep_points(cfg)  # names the unknown kind
        raise ProbeError(f"perturbation kinds {list(cfg.kinds)} mix sites; probe USE's (scale, clip, offset) and "
                         "LEARN's (clamp_min, clamp_max) kinds with two probes.")
    return sites.pop()


def during_points(cfg) -> dict[str, list[float]]:
    """The points of sweeps during training: `during_grids` where given (else each kind's grid);
    `magnitude` / `magnitudes` when set, as for the final sweep."""
    during = cfg.get("during_grids") or {}
    if cfg.get("magnitude") is not None or cfg.get("magnitudes") is not None or not during:
        return sweep_points(cfg)
    grids = {**OmegaConf.to_container(OmegaConf.create(cfg.get("grids") or {}), resolve=True),
             **OmegaConf.to_container(OmegaConf.create(during), resolve=True)}
    return sweep_points({**{k: cfg.get(k) for k in ("kinds", "splits", "unit", "ranges")}, "grids": grids})


def during_line(rows: list[dict], layer: str, label: str, epoch: int, seconds: float) -> str:
    """One line for a sweep during training: each kind's accuracy range on the first split, and the baseline."""
    split = rows[0]["split"]
    ranges = {}
    for r in rows:
        if r["split"] == split and r["kind"] != "baseline":
            ranges.setdefault(r["kind"], []).append(100 * r["accuracy"])
    base = next(100 * r["accuracy"] for r in rows if r["split"] == split and r["kind"] == "baseline")
    kinds = ", ".join(f"{k} {min(v):.0f}-{max(v):.0f}%" for k, v in ranges.items())
    return (f"[probe {label + ' ' if label else ''}{layer} epoch {epoch}] {split} {base:.1f}% unperturbed; {kinds} "
            f"({sum(len(v) for v in ranges.values())} points, {seconds:.2f}s)")


class DistanceProbe(pl.Callback):
    """The perturbation test of both papers as a Lightning callback, for any model and layer.

    Args:
        layer: the submodule to probe, as `named_modules()` names it (e.g. "encoder.2").
        perturbation: a grid of conf/perturbation/ by name ("use": scale, clip, offset; "learn":
            clamp_min, clamp_max), or a mapping with its keys (kinds, grids, during_grids, ...).
        site: pre_activation (the layer's output) or post_activation (the activation's after it);
            default: where the kinds act.
        activation: the activation module after `layer`, when it is not found by itself.
        activation_fn: a function (e.g. torch.relu) applied to the layer's output to measure the unit
            ranges, for models that call their activation as a function (nn.TransformerEncoderLayer's
            linear1). Without either, and no activation module right after the layer, the ranges are the
            layer's own output's; the probe prints which and writes it to `<stem>_sites.json`.
        unit_dim: the axis of the layer's output that holds its units; by default a Linear's last
            axis and a conv's axis 1 (needed for any other module whose output has more than 2 axes).
        every_n_epochs: also sweep at epoch 0 and every N training epochs, on the coarser
            `during_grids`; None sweeps only when training ends (the full grid).
        splits: where accuracy is measured: "train", "val", "test"; unit ranges always come
            from the training data.
        data: {split: DataLoader, or an (x, y) pair of tensors}; by default the Trainer's own
            train and val dataloaders. Batches are (x, y, ...) and model(x) gives logits.
        model: the attribute of the LightningModule to probe (default: the module itself).
        dirpath: where probe.csv goes (default: the Trainer's log_dir, else default_root_dir).
        final_grid: "full" (the grids) or "during" (the coarse during_grids, for a quick look) when training ends.

    Example:
        >>> probe = DistanceProbe(layer="classifier.1", every_n_epochs=2, splits=("train", "val"))  # doctest: +SKIP
        >>> pl.Trainer(max_epochs=10, callbacks=[probe]).fit(model, datamodule=dm)                  # doctest: +SKIP
    """

    columns = PROBE_COLUMNS

    def __init__(self, layer: str, perturbation="use", site: str | None = None, activation: str | None = None,
                 every_n_epochs: int | None = None, splits=("train",), data: dict | None = None,
                 model: str | None = None, dirpath: str | Path | None = None, filename: str = "probe.csv",
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, final_grid: str = "full", log=print, activation_fn=None,
                 unit_dim: int | None = None):
        self.layer, self.activation, self.model_attr = layer, activation, model
        self.activation_fn, self.unit_dim = activation_fn, unit_dim
        self.cfg = _config(perturbation)
        if splits is not None:
            self.cfg.splits = list(splits)
        self.site = site or kinds_site(self.cfg)
        sweep_points(self.cfg, self.site)  # a bad grid fails before training
        sweep_splits(self.cfg)
        if every_n_epochs is not None and (isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int)
                                           or every_n_epochs < 1):
            raise ProbeError(f"every_n_epochs={every_n_epochs!r}; accepted: a whole number >= 1, or None (null) to "
                             "sweep only when training ends.")
        self.during = during_points(self.cfg) if every_n_epochs or final_grid == "during" else None
        if final_grid not in ("full", "during"):
            raise ProbeError(f"final_grid={final_grid!r}; accepted: full (the grids) or during (the coarse "
                             "during_grids).")
        self.final_grid = final_grid
        self.every_n_epochs, self.data = every_n_epochs, data or {}
        self.dirpath, self.filename, self.chunk_rows, self.print = dirpath, filename, chunk_rows, log
        self.done: dict[Path, set[int]] = {}
        self.noted: set[Path] = set()

    def locate(self, model: nn.Module, sample: torch.Tensor | None = None) -> ProbeSite:
        return locate(model, self.layer, self.site, self.activation, sample, self.activation_fn, self.unit_dim)

    # -- what is probed, where results go (dmlight's PerturbationSweep overrides these)
    def targets(self, trainer, pl_module, final: bool) -> list[tuple[str, nn.Module, Path, list]]:
        """(label, model, directory, loggers) of each model to probe."""
        model = pl_module if self.model_attr is None else pl_module.get_submodule(self.model_attr)
        where = self.dirpath or trainer.log_dir or trainer.default_root_dir
        return [("", model, Path(where), list(trainer.loggers))]

    def batches(self, trainer, pl_module, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A split's (x, y) batches on the module's device."""
        source = self.data.get(split)
        if source is None:
            source = {"train": lambda: trainer.train_dataloader, "val": lambda: trainer.val_dataloaders,
                      "test": lambda: trainer.test_dataloaders}[split]()
            if isinstance(source, (list, tuple)) and source and not isinstance(source[0], torch.Tensor):
                source = source[0]  # the first of several dataloaders
        if source is None:
            raise ProbeError(f"the probe has no {split} data: the Trainer has no {split} dataloader. Pass "
                             f"DistanceProbe(data={{'{split}': <DataLoader or (x, y)>}}), or leave {split!r} out "
                             "of splits.")
        if isinstance(source, (list, tuple)) and len(source) == 2 and isinstance(source[0], torch.Tensor):
            x, y = source
            source = [(x[i: i + self.chunk_rows], y[i: i + self.chunk_rows]) for i in range(0, len(x), self.chunk_rows)]
        out = []
        for batch in source:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise ProbeError(f"a {split} batch is a {type(batch).__name__}; the probe needs (x, y, ...) batches, "
                                 "or pass data={split: (x, y)}.")
            out.append((batch[0].to(pl_module.device), batch[1].to(pl_module.device)))
        return out

    def record(self, directory: Path, loggers, rows, ranges, trainer, epoch: int, final: bool) -> None:
        """Write a sweep's rows (and, at the end, the unit ranges) and log them."""
        rows = [{**r, "layer": self.layer} for r in rows]
        append_results(directory, rows, self.filename, self.columns)
        if final:
            write_unit_ranges(directory, ranges, f"{Path(self.filename).stem}_{self.layer}_unit_ranges.csv")
        metrics = sweep_metrics(rows, f"probe/{self.layer}")
        for logger in loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    def note_site(self, directory: Path, where: ProbeSite, n_units: int) -> None:
        """Say once per directory what the probe measures: its units and what their ranges are taken after; the
        same in <stem>_sites.json beside the rows (one entry per layer, so probes sharing a file keep theirs)."""
        if directory in self.noted:
            return
        self.noted.add(directory)
        fallback = " (no activation module follows it: name one, activation=..., or pass activation_fn=...)" \
            if where.ranges_after == OWN_OUTPUT else ""
        if self.print:
            self.print(f"[probe {self.layer}] {n_units} units, its {where.units}; unit ranges measured on "
                       f"{where.ranges_after}{fallback}; perturbed at {where.target!r} ({where.site})")
        path = directory / f"{Path(self.filename).stem}_sites.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        sites = read_json(path) or {}
        sites[self.layer] = {"site": where.site, "perturbed": where.target, "units": n_units, "unit_axis": where.units,
                             "unit_dim": where.unit_dim, "ranges_after": where.ranges_after}
        write_json_atomic(path, sites)

    # -- the sweep
    def sweep(self, trainer, pl_module, epoch: int, final: bool) -> None:
        if not trainer.is_global_zero:
            return
        points = sweep_points(self.cfg, self.site) if final and self.final_grid == "full" else self.during
        with isolate_rng():  # reading a shuffled loader draws from the RNG the training's next epoch uses
            self._sweep_targets(trainer, pl_module, epoch, final, points)

    def _sweep_targets(self, trainer, pl_module, epoch: int, final: bool, points) -> None:
        for label, model, directory, loggers in self.targets(trainer, pl_module, final):
            if directory not in self.done:
                self.done[directory] = recorded_epochs(directory, self.filename, self.layer)
            if not final and epoch in self.done[directory]:
                continue  # a resumed run already has this epoch's sweep
            modes = [(m, m.training) for m in model.modules()]  # each its own: a frozen part stays in eval
            model.eval()
            t0 = time.perf_counter()
            try:
                sweeps, ranges = self._sweeps(trainer, pl_module, model, directory)
                # a line per kind at the end; one line per sweep during training
                rows = sweep_rows(sweeps, points, ranges, self.cfg.get("unit"), epoch, self.print if final else None,
                                  label, unit_seed(self.cfg), sweep_ranges(self.cfg))
            finally:
                for m, training in modes:
                    m.training = training
            if self.print and not final:
                self.print(during_line(rows, self.layer, label, epoch, time.perf_counter() - t0))
            self.record(directory, loggers, rows, ranges, trainer, epoch, final)
            self.done[directory].add(epoch)

    def _sweeps(self, trainer, pl_module, model, directory: Path):
        train = self.batches(trainer, pl_module, "train")
        where = self.locate(model, train[0][0][:2] if train else None)
        batches = {"train": train}
        sweeps, ranges = site_sweeps(
            model, where, lambda split: batches.get(split) or self.batches(trainer, pl_module, split),
            sweep_splits(self.cfg), self.cfg.get("unit"), self.chunk_rows, sweep_ranges(self.cfg))
        self.note_site(directory, where, len(ranges.min))
        return sweeps, ranges

    # -- Lightning hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is None:  # a fresh fit measures every epoch again, even into a used dirpath
            self.done = {d: set() for _, _, d, _ in self.targets(trainer, pl_module, final=False)}
        for _, model, _, _ in self.targets(trainer, pl_module, final=False):
            self.locate(model)  # a wrong name fails before training, not after
        if "test" in sweep_splits(self.cfg) and self.data.get("test") is None:
            raise ProbeError("the probe has no test data: Trainer.fit has no test dataloader. Pass "
                             "DistanceProbe(data={'test': <DataLoader or (x, y)>}), or leave 'test' out of splits.")

    def on_train_start(self, trainer, pl_module) -> None:
        if self.every_n_epochs and trainer.current_epoch == 0:
            self.sweep(trainer, pl_module, 0, final=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs >= 0 and done >= trainer.max_epochs \
            or trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps
        if self.every_n_epochs and done % self.every_n_epochs == 0 and not last and not trainer.should_stop:
            self.sweep(trainer, pl_module, done, final=False)

    def on_train_end(self, trainer, pl_module) -> None:
        # Training is over; the model is still on its device (Lightning moves it to the CPU before on_fit_end).
        self.sweep(trainer, pl_module, int(trainer.current_epoch), final=True)


class LayerSweep(DistanceProbe):
    """dmlight's own training at one layer: the `perturbation` config's probe on every member network (one for
    a solo run, one per seed for an ensemble) at the network's site (`arch.site`), writing perturbation.csv and
    unit_ranges.csv (perturbation_<layer>.csv and unit_ranges_<layer>.csv for another layer than `hidden`) into
    each member's run directory and, with W&B on, the final sweep of `hidden` into the member's own W&B run
    (dmlight.tracking.wandb_log.log_sweep)."""

    columns = PERTURBATION_COLUMNS

    def __init__(self, run_dirs: list[Path], cfg, layer: str, several: bool = False):
        self.run_dirs, self.several = run_dirs, several
        filename, self.ranges_file = layer_files(layer)  # another layer's rows go to files of its own
        super().__init__(layer=layer, perturbation=cfg, site=None, splits=None,
                         every_n_epochs=cfg.get("every_n_epochs"), filename=filename,
                         chunk_rows=cfg.get("chunk_rows") or DEFAULT_CHUNK_ROWS)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.site = pl_module.net.site  # the run's own network decides the site and the units
        sweep_points(self.cfg, self.site)
        net = pl_module.members()[0]
        try:
            where = locate(net, self.layer, self.site)
        except ProbeError as e:  # in the config's words: the key is perturbation.layer
            raise ProbeError(f"perturbation.layer={self.layer} ({net.name}): {e}") from None
        check_unit(self.cfg.get("unit"), where.n_units, self.layer)

    def targets(self, trainer, pl_module, final: bool):
        members = pl_module.members()
        own, _ = member_loggers(trainer.loggers, self.run_dirs)  # each member's own W&B run
        retired = getattr(pl_module, "retired", {})
        layer = self.layer if self.several else ""
        return [(" ".join(filter(None, (run_dir.name if len(members) > 1 else "", layer))),
                 net.to(pl_module.data.x_train.device), run_dir, loggers)
                for m, (net, run_dir, loggers) in enumerate(zip(members, self.run_dirs, own))
                if final or m not in retired]  # a diverged member is not swept during training

    def batches(self, trainer, pl_module, split: str):
        return [pl_module.data.split(split)]

    def record(self, directory, loggers, rows, ranges, trainer, epoch: int, final: bool) -> None:
        append_results(directory, rows, self.filename, self.columns)
        if final:
            write_unit_ranges(directory, ranges, self.ranges_file)
            if self.layer == "hidden":
                log_sweep(loggers, rows)
        else:
            prefix = "perturbation_during" if self.layer == "hidden" else f"perturbation_during/{self.layer}"
            metrics = sweep_metrics(rows, prefix)
            for logger in loggers:
                logger.log_metrics(metrics, step=epoch)  # the step of metrics.csv's rows

    def note_site(self, directory: Path, where: ProbeSite, n_units: int) -> None:
        pass  # dmlight's networks: a Linear's features, ranges after its activation module (unit_ranges.csv)


class PerturbationSweep(pl.Callback):
    """dmlight's own training: the `perturbation` config's sweep at each layer `perturbation.layer` names (one,
    a list, or `all`: every hidden layer), a LayerSweep each, in one run. A config that cannot run fails when
    training starts, not after it; `perturbation=none` (no kinds) sweeps nothing.
    """

    def __init__(self, run_dirs: str | Path | list, cfg):
        self.run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
        self.cfg, self.layers = cfg, sweep_layers(cfg.get("layer"))
        self.on = bool(cfg.get("kinds"))
        self.sweeps: list[LayerSweep] = []
        if self.on and self.layers != ["all"]:
            self.sweeps = self._make(self.layers)  # a bad grid fails here, before training

    def _make(self, layers: list[str]) -> list[LayerSweep]:
        return [LayerSweep(self.run_dirs, self.cfg, layer, several=len(layers) > 1) for layer in layers]

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.on:
            return
        if self.layers == ["all"]:
            self.sweeps = self._make(sweep_layers("all", pl_module.members()[0]))
        for sweep in self.sweeps:
            sweep.on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        for sweep in self.sweeps:
            sweep.on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for sweep in self.sweeps:
            sweep.on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        for sweep in self.sweeps:
            sweep.on_train_end(trainer, pl_module)
