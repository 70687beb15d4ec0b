"""Hand-made run folders for the report tests, written to the trainer's file contract.

The USE sweeps follow the published curves (interpolated onto the authors' grids) and the LEARN
accuracies have exactly the published mean and std, so a report on them should replicate every
claim; each test then moves one number across one threshold.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dmlight import published as pub

# The authors' grids (PAPERS.md): scale and clip log-spaced, offset in three linear pieces.
LOG_GRID = np.logspace(-2, 1, 100)
OFFSET_GRID = np.sort(np.concatenate([np.linspace(-2.0, -0.4, 32, endpoint=False),
                                      np.linspace(-0.4, 0.4, 80, endpoint=False),
                                      np.linspace(0.4, 1.0, 13)]))
LEARN_NO_BIAS = ("ReLU", "Abs", "ReLU2", "Abs2", "ReLU2-Neg", "Abs2-Neg")
OFFSET_L2 = ("ReLU-L2", "ReLU-L2-Neg", "Abs-L2", "Abs-L2-Neg")


def arch_of(model: str) -> tuple[str, str, bool]:
    """(arch, activation, head_bias) of a paper name, e.g. 'Abs2-Neg_Bias' -> ('mlp2_neg', 'abs', True)."""
    base = model.removesuffix("_Bias")
    act = base.split("-")[0].rstrip("2")
    arch = ("offset_l2_neg" if base.endswith("-L2-Neg") else "offset_l2" if base.endswith("-L2")
            else "mlp2_neg" if base.endswith("2-Neg") else "mlp2" if base.endswith("2") else "mlp")
    return arch, act.lower(), model.endswith("_Bias")


def make_run(root: Path, experiment: str, model: str, seed: int, *, test_acc: float, train_acc: float | None = None,
             train_loss: float = 0.05, epochs: int = 20, dead_outputs: int = 0, perturbation=None,
             complete: bool = True, data: str = "mnist5k", diverged_at: int | None = None,
             diverged_loss: str = "nan", diverged_fields: bool = True, variant: str | None = None,
             lr: float = 0.001, hidden: int = 128, site: str = "pre_activation", provenance: dict | None = None) -> Path:
    """One run folder; accuracies are fractions. perturbation: a DataFrame in perturbation.csv's columns.

    diverged_at: the run diverged at that epoch (its training loss became `diverged_loss` there): metrics.csv stops
    at it and summary.json says status "diverged", without accuracies, loss or units (and without diverged_epoch and
    diverged_loss when diverged_fields is False). variant: written to the summary and the folder when given (None
    writes a summary from before the field existed). site: the summary's perturbation_site. provenance: the summary's
    provenance block (None: a summary from before it existed).
    """
    arch, act, bias = arch_of(model)
    run = Path(root) / experiment / f"{data}-raw" / model / (variant or "") / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(f"experiment_name: {experiment}\nseed: {seed}\narch:\n  name: {arch}\n"
                                     f"  head_bias: {str(bias).lower()}\nactivation:\n  name: {act}\n")
    train_acc = min(1.0, test_acc + 0.02) if train_acc is None else train_acc
    e = np.arange(1, (epochs if diverged_at is None else diverged_at) + 1)
    loss = 2.3 * np.exp(-e / 4) + train_loss
    if diverged_at is not None:
        loss[-1] = float(diverged_loss)
    pd.DataFrame({"epoch": e, "train_loss": loss,
                  "train_acc": train_acc * (1 - np.exp(-e / 3)),
                  "test_acc": np.where(e % 5 == 0, test_acc * (1 - np.exp(-e / 3)), np.nan)}
                 ).to_csv(run / "metrics.csv", index=False)
    identity = {"experiment": experiment, "model_name": model, "arch": arch, "activation": act, "head_bias": bias,
                "hidden": hidden, "seed": seed, "data": data, "preprocess": "raw", "epochs": epochs, "lr": lr,
                "perturbation_site": site, **({} if variant is None else {"variant": variant})}
    if diverged_at is not None:
        summary = {"status": "diverged", **identity}
        if diverged_fields:
            summary.update(diverged_epoch=diverged_at, diverged_loss=diverged_loss)
        (run / "summary.json").write_text(json.dumps(summary))
        return run
    if perturbation is not None:
        perturbation.to_csv(run / "perturbation.csv", index=False)
    if complete:
        counts = {"n": 128, "dead": 2 + seed % 2, "rare": 4}
        units = {"activation": {"train": counts, "test": {**counts, "dead": counts["dead"] + 1}}}
        if arch.startswith("mlp2"):
            units["output_activation"] = {s: {"n": 10, "dead": dead_outputs, "rare": 1} for s in ("train", "test")}
        summary = {"status": "complete", **identity, "train_loss": train_loss, "train_acc": train_acc,
                   "test_acc": test_acc, "units": units, "wall_time_s": 1.0,
                   **({} if provenance is None else {"provenance": provenance})}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def published_curve(model: str, kind: str, magnitudes) -> np.ndarray:
    """The USE paper's mean train accuracy (%) at any magnitude, interpolated between its published points."""
    base = pub.USE_BASELINE[model]["train"][0]
    points, table = pub.USE_POINTS[kind]
    x, y = list(points), list(table[model])
    if kind == "offset":
        x, y = zip(*sorted(zip(x + [0.0], y + [base])))
        return np.interp(magnitudes, x, y)
    # scale 100% and clip 100% are the unperturbed network; interpolate in log magnitude
    x, y = zip(*sorted(set(zip(x + [1.0, 10.0], y + [base, base]))))
    return np.interp(np.log(magnitudes), np.log(x), y)


def use_sweep(model: str, seed: int, tweak=None) -> pd.DataFrame:
    """perturbation.csv rows of one run: a stale first pass (must be overridden), the real sweep on the
    training set, a test-set copy 3 pp lower, and a few per-unit rows (must be ignored by the tables).

    tweak(kind, magnitudes, accuracy_pct) -> accuracy_pct changes the training-set curve.
    """
    rng = np.random.default_rng(seed)
    shift = -rng.uniform(0, 0.1)  # a run's own level: baseline and perturbed move together
    rows = [("baseline", np.nan, "train", "all", 0.5)]  # stale, appended before the real sweep
    rows += [("offset", m, "train", "all", 0.1) for m in OFFSET_GRID]
    base = pub.USE_BASELINE[model]["train"][0] + shift
    real = [("baseline", np.nan, "train", "all", base)]
    for kind, grid in (("scale", LOG_GRID), ("clip", LOG_GRID), ("offset", OFFSET_GRID)):
        acc = published_curve(model, kind, grid) + shift + rng.normal(0, 0.005, len(grid))
        if tweak is not None:
            acc = tweak(kind, grid, acc)
        real += [(kind, m, "train", "all", a) for m, a in zip(grid, acc)]
    rows += [(k, m, "train", u, a / 100) for k, m, _, u, a in real]
    rows += [(k, m, "test", u, (a - 3) / 100) for k, m, _, u, a in real]
    rows += [("offset", m, "train", "5", 0.2) for m in (-0.1, 0.1)]
    df = pd.DataFrame(rows, columns=["kind", "magnitude", "split", "unit", "accuracy"])
    df["accuracy"] = df.accuracy.clip(0, 1)
    return df


def make_use_runs(root: Path, seeds=(0, 1, 2), tweak=None, models=pub.USE_MODELS) -> None:
    for model in models:
        train_pct, _ = pub.USE_BASELINE[model]["train"]
        test_pct, _ = pub.USE_BASELINE[model]["test"]
        for seed in seeds:
            make_run(root, "use_distance_metrics", model, seed, test_acc=(test_pct + 0.1 * (seed - 1)) / 100,
                     train_acc=train_pct / 100, train_loss=pub.USE_BASELINE[model]["loss"][0],
                     perturbation=use_sweep(model, seed, tweak))


def exact(mean: float, std: float, n: int) -> np.ndarray:
    """n values with exactly this mean and sample std (n-1)."""
    z = np.arange(n, dtype=float)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + std * z


def make_learn_runs(root: Path, models=LEARN_NO_BIAS + tuple(m + "_Bias" for m in LEARN_NO_BIAS) + OFFSET_L2,
                    n: int = 3, accuracy: dict | None = None, dead_outputs: dict | None = None) -> None:
    """LEARN runs whose test accuracies have the published mean and std (or accuracy[model] = (mean, std) in %);
    ReLU2 models have 3 of 10 output units dead unless dead_outputs[model] says otherwise."""
    accuracy = {**pub.LEARN_TEST, **(accuracy or {})}
    dead_outputs = {"ReLU2": 3, "ReLU2_Bias": 3, **(dead_outputs or {})}
    for model in models:
        experiment = "offset_l2" if "-L2" in model else "learn_bias" if model.endswith("_Bias") else \
            "learn_distance_metrics"
        for seed, acc in enumerate(exact(*accuracy[model], n)):
            make_run(root, experiment, model, seed, test_acc=acc / 100, dead_outputs=dead_outputs.get(model, 0))


# Sweeps during training (perturbation.every_n_epochs): a coarse part of each grid, then the full grid at the end.
COARSE_LOG_GRID = LOG_GRID[::3]        # 34 of the 100 points, 1% and 1000% included
COARSE_OFFSET_GRID = OFFSET_GRID[::4]  # 32 of the 125 points, 0 included
SWEEP_COLUMNS = ["epoch", "kind", "magnitude", "split", "unit", "accuracy"]  # perturbation.csv since `epoch`


def training_sweeps(model: str, seed: int, epochs=(0, 150, 300), final_epoch: int = 400) -> pd.DataFrame:
    """perturbation.csv (with `epoch`) of a USE run that swept at `epochs` during training on the coarse grids, then
    at final_epoch use_sweep's full sweep (which replicates every USE claim). With f = epoch / final_epoch, the
    unperturbed accuracy climbs from chance (10%) to the published one and the offset curve is the published one at
    magnitude * sqrt(f): flat before training, its dip narrowing as the distance code appears."""
    rng = np.random.default_rng(100 + seed)
    rows = []
    for e in epochs:
        f = e / final_epoch
        progress = (1 - np.exp(-6 * f)) / (1 - np.exp(-6))
        for split, below in (("train", 0.0), ("test", 3.0)):
            curve = {"baseline": np.array([pub.USE_BASELINE[model]["train"][0]])}
            for kind, grid in (("scale", COARSE_LOG_GRID), ("clip", COARSE_LOG_GRID), ("offset", COARSE_OFFSET_GRID)):
                curve[kind] = published_curve(model, kind, grid * np.sqrt(f) if kind == "offset" else grid)
            for kind, acc in curve.items():
                grid = {"baseline": [np.nan], "offset": COARSE_OFFSET_GRID}.get(kind, COARSE_LOG_GRID)
                acc = 10 + (acc - below - 10) * progress + rng.normal(0, 0.05, len(acc))
                rows += [(e, kind, m, split, "all", a / 100) for m, a in zip(grid, np.clip(acc, 0, 100))]
    final = use_sweep(model, seed).assign(epoch=final_epoch)
    return pd.concat([pd.DataFrame(rows, columns=SWEEP_COLUMNS), final[SWEEP_COLUMNS]], ignore_index=True)
