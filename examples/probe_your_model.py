"""Probe your own model: does a layer code by distance or by intensity, and when does that appear?

A small CNN on Fashion-MNIST, trained with plain PyTorch Lightning, with dmlight's DistanceProbe on
a conv layer (each channel is a unit) and on the penultimate Linear. Nothing in the model knows
about the probe: it is a callback, like a checkpoint.

    python examples/probe_your_model.py                 # ~40 s on 2 idle CPU cores
    python examples/probe_your_model.py --epochs 10 --train-rows 60000 --full-grid

Results: <out>/probe.csv (epoch, layer, kind, magnitude, split, unit, accuracy) and the figures
<out>/figures/*.png: per layer, accuracy over (training epoch x magnitude) for each kind, and the
offset-vs-intensity sensitivity ratio over training (USE claim 4's measure).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dmlight import DistanceProbe
from dmlight.data.datasets import DataError, load_data


class SmallCNN(pl.LightningModule):
    """Conv(1->8) -> ReLU -> pool -> Conv(8->16) -> ReLU -> pool -> Linear(400->64) -> ReLU -> Linear(64->10)."""

    def __init__(self, lr: float = 1e-3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def images(x: torch.Tensor) -> torch.Tensor:
    """dmlight's rows of 784 raw pixels -> (n, 1, 28, 28) in 0..1."""
    return (x / 255.0).reshape(-1, 1, 28, 28)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Figures: per probed layer, accuracy over (epoch x magnitude); the "
                                        "offset-vs-intensity ratio over training.")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    ap.add_argument("--train-rows", type=int, default=30000, help="training images used (default 30000 of 60000)")
    ap.add_argument("--probe-rows", type=int, default=500,
                    help="training (and validation) images the probe measures on (default 500)")
    ap.add_argument("--val", action="store_true", help="also measure the probe's accuracy on validation images")
    ap.add_argument("--full-grid", action="store_true",
                    help="end with the papers' full grid (325 points per split and layer) instead of the coarse one")
    ap.add_argument("--every", type=int, default=1, help="probe every N epochs (default 1)")
    ap.add_argument("--quiet", action="store_true", help="no line per probed kind")
    ap.add_argument("--out", type=Path, default=Path("outputs/probe_example"), help="where results go")
    ap.add_argument("--data-dir", default="data", help="where Fashion-MNIST's IDX files are (also searched: "
                    "/usr/share/datasets/fashion-mnist)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    try:
        data = load_data("fashion_mnist", data_dir=args.data_dir, download=False)
    except DataError as e:
        sys.exit(f"probe_your_model: {e}")
    pl.seed_everything(args.seed, verbose=False)
    x_train, y_train = images(data.x_train[: args.train_rows]), data.y_train[: args.train_rows]
    x_val, y_val = images(data.x_test[:2000]), data.y_test[:2000]  # a quick validation
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=1000)
    n = args.probe_rows
    probe_data = {"train": (x_train[:n], y_train[:n]), "val": (x_val[:n], y_val[:n])}

    # One probe per layer: the first conv layer (each of its 8 channels is a unit; the ReLU after it is
    # found by itself) and the penultimate Linear (64 units). USE's kinds: scale, clip, offset.
    probes = [DistanceProbe(layer=layer, perturbation="use", every_n_epochs=args.every,
                            splits=("train", "val") if args.val else ("train",),
                            data=probe_data, dirpath=args.out, log=None if args.quiet else print, final_grid="full" if args.full_grid else "during")
              for layer in ("features.0", "classifier.1")]
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=probes, logger=CSVLogger(args.out, name="logs"),
                         enable_checkpointing=False, accelerator="auto", devices=1)
    trainer.fit(SmallCNN(), train, val)

    from dmlight.report.emergence import plot_probe_file

    figures = plot_probe_file(args.out / "probe.csv", args.out / "figures")
    print(f"\nprobe results: {args.out / 'probe.csv'}")
    print(f"logged metrics (probe/<layer>/<split>/<kind>/<magnitude>): {trainer.logger.log_dir}/metrics.csv")
    for path in figures:
        print(f"figure: {path}")
    return args.out


if __name__ == "__main__":
    main()
