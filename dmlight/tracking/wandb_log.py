"""What a run logs to W&B, under which keys: the one home of the keys the training runs write and the
dashboard (dmlight.dashboard) plots. Imports neither torch nor wandb (wandb only when a sweep is logged).

Every seed is its own W&B run (an ensemble member's run is its solo run's twin), so W&B's grouping by
config key gives the mean and a band over seeds for any key below:

    trainer/global_step                  the epoch: x axis of the learning curves (WandbLogger's step)
    train/loss, train/acc, test/acc      learning curves, one point per epoch (as metrics.csv)
    perturbation/<kind>/magnitude        a sweep's magnitude p: x axis of that kind's curves
    perturbation/<kind>/<split>          accuracy at p on the train (or test) set (as perturbation.csv)
    perturbation/<kind>_rows             the kind's rows of perturbation.csv, as a table
    perturbation/baseline_<split>        the unperturbed accuracy
    table/<name>, figure/<name>          the report run's tables (table/scorecard) and figures

A sweep of one unit (perturbation.unit=k) logs its kind as `<kind>_unit<k>`.
"""
from __future__ import annotations

STEP = "trainer/global_step"
LEARNING_CURVES = ("train/loss", "train/acc", "test/acc")
SCORECARD = "table/scorecard"


def learning_curves(loss: float, acc: float, test: float | None) -> dict[str, float]:
    """One epoch's row of the learning curves (a test accuracy of None or NaN: not evaluated that epoch).

    Example:
        >>> learning_curves(0.5, 0.875, float("nan"))
        {'train/loss': 0.5, 'train/acc': 0.875}
    """
    row = dict(zip(LEARNING_CURVES[:2], (float(loss), float(acc))))
    if test is not None and test == test:
        row[LEARNING_CURVES[2]] = float(test)
    return row


def magnitude_key(kind: str) -> str:
    """The x axis of a perturbation kind's curves, e.g. 'perturbation/offset/magnitude'."""
    return f"perturbation/{kind}/magnitude"


def accuracy_key(kind: str, split: str) -> str:
    """The accuracy under perturbation `kind` on `split`, e.g. 'perturbation/offset/train'."""
    return f"perturbation/{kind}/{split}"


def baseline_key(split: str) -> str:
    """The unperturbed accuracy of a run's final sweep on `split`, e.g. 'perturbation/baseline_train'."""
    return f"perturbation/baseline_{split}"


def rows_key(label: str) -> str:
    """The W&B table of one kind's (or one unit's kind's) sweep rows, e.g. 'perturbation/offset_rows'."""
    return f"perturbation/{label}_rows"


def sweep_metrics(rows: list[dict], prefix: str) -> dict[str, float]:
    """A sweep's rows as scalar metrics, for sweeps during training and any logger: <prefix>/<split>/baseline
    and <prefix>/<split>/<kind>/<magnitude> (DistanceProbe's prefix: probe/<layer>; dmlight's: perturbation_during).

    Example:
        >>> sweep_metrics([{"split": "train", "kind": "offset", "magnitude": -0.1, "accuracy": 0.5}], "probe/fc")
        {'probe/fc/train/offset/-0.1': 0.5}
    """
    return {f"{prefix}/{r['split']}/" + ("baseline" if r["kind"] == "baseline" else f"{r['kind']}/{r['magnitude']:g}"):
            r["accuracy"] for r in rows}


def table_key(name: str) -> str:
    """Where the report run logs its table `name` (tables/<name>.csv, or 'scorecard')."""
    return f"table/{name}"


def wandb_runs(loggers) -> list:
    """The W&B runs among `loggers` (Lightning loggers, or runs themselves), found by what they can do
    (`define_metric` and `log`), so any logger wrapping a W&B run counts."""
    runs = []
    for logger in loggers:
        run = logger if hasattr(logger, "define_metric") else getattr(logger, "experiment", None)
        if callable(getattr(run, "define_metric", None)) and callable(getattr(run, "log", None)):
            runs.append(run)
    return runs


def _label(row: dict) -> str:
    unit = row.get("unit", "all")
    return row["kind"] if unit in ("all", None, "") else f"{row['kind']}_unit{unit}"


def sweep_history(rows: list[dict]) -> list[dict]:
    """perturbation.csv's rows as W&B history rows: one per kind and magnitude, holding the magnitude and
    the accuracy on each split measured, in the sweep's order.

        >>> sweep_history([{"kind": "offset", "magnitude": 0.1, "split": "train", "unit": "all", "accuracy": 0.9},
        ...                {"kind": "offset", "magnitude": 0.1, "split": "test", "unit": "all", "accuracy": 0.8}])
        [{'perturbation/offset/magnitude': 0.1, 'perturbation/offset/train': 0.9, 'perturbation/offset/test': 0.8}]
    """
    points: dict[tuple, dict] = {}
    for r in rows:
        if r["kind"] == "baseline":
            continue
        kind, p = _label(r), float(r["magnitude"])
        point = points.setdefault((kind, p), {magnitude_key(kind): p})
        point[accuracy_key(kind, r["split"])] = float(r["accuracy"])
    return list(points.values())


def log_sweep(loggers, rows: list[dict]) -> None:
    """Log a perturbation sweep (the rows of perturbation.csv) to every W&B run among `loggers`: one history
    row per magnitude with the magnitude as the step metric of its kind's accuracies (so a W&B line plot of
    `perturbation/<kind>/train` against `perturbation/<kind>/magnitude`, grouped by model, draws the papers'
    perturbation figure with a band over seeds), a table per kind and the baselines.

        >>> log_sweep(trainer.loggers, run_sweep(net, data, cfg)[0])  # doctest: +SKIP
    """
    runs = wandb_runs(loggers)
    if not runs:
        return
    import wandb

    history = sweep_history(rows)
    kinds = list(dict.fromkeys(_label(r) for r in rows if r["kind"] != "baseline"))
    splits = list(dict.fromkeys(r["split"] for r in rows if r["kind"] != "baseline"))
    columns = ["kind", "magnitude", "split", "unit", "accuracy"]
    extra = {baseline_key(r["split"]): r["accuracy"] for r in rows if r["kind"] == "baseline"}
    for run in runs:
        for kind in kinds:
            # summary "none": the last magnitude's accuracy would be a meaningless number in the runs table
            run.define_metric(magnitude_key(kind), summary="none")
            for split in splits:
                run.define_metric(accuracy_key(kind, split), step_metric=magnitude_key(kind), summary="none")
        for point in history:
            run.log(point)
        tables = {rows_key(kind): wandb.Table(
            columns=columns, data=[[r[c] for c in columns] for r in rows if r["kind"] != "baseline"
                                   and _label(r) == kind]) for kind in kinds}
        run.log({**extra, **tables})
