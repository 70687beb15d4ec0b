"""The one LightningModule that trains any network of both papers, full-batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytorch_lightning as pl
from torchmetrics.functional.classification import multiclass_accuracy

from dmlight.data import Splits


class Batches:
    """The training split as batches: one full batch (the papers), or shuffled mini-batches.

    The tensors stay where they are (already on the training device), so an epoch costs
    no copies.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int = 0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        if not self.batch_size:
            return 1
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        if not self.batch_size:
            yield self.x, self.y
            return
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        for i in range(0, len(self.x), self.batch_size):
            idx = order[i: i + self.batch_size]
            yield self.x[idx], self.y[idx]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy as a fraction (torchmetrics; argument checks off, the shapes are ours)."""
    return multiclass_accuracy(logits, y, num_classes=logits.shape[-1], average="micro",
                               validate_args=False)


class DistanceModule(pl.LightningModule):
    """Cross-entropy on the network output as logits, optimizer from config.

    Every epoch records (train_loss, train_acc, test_acc) into `self.history`, a tensor on
    the training device, so nothing forces a device sync per step; the RunRecorder callback
    flushes it to metrics.csv and the loggers.
    """

    def __init__(self, net: torch.nn.Module, data: Splits, optimizer, batch_size: int | None = None,
                 eval_every: int = 1, seed: int = 0):
        super().__init__()
        self.net = net
        self.data = data
        self.optimizer_factory = optimizer  # a callable params -> Optimizer (Hydra partial)
        self.batch_size, self.eval_every, self.seed = batch_size, max(1, int(eval_every)), seed
        self.automatic_optimization = False  # one plain SGD step per batch; less overhead
        self.history: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())

    def setup(self, stage: str) -> None:
        self.data = self.data.to(self.device)
        max_epochs = self.trainer.max_epochs if self._trainer is not None else 0
        self.history = torch.full((max(max_epochs, 1), 3), float("nan"), device=self.device)

    def train_dataloader(self):
        return Batches(self.data.x_train, self.data.y_train, self.batch_size, self.seed)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        if not self.batch_size:
            # Full batch: this forward pass already measured the whole training set.
            self._record(0, loss.detach())
            self._record(1, accuracy(logits.detach(), y))
        if batch_idx == self.trainer.num_training_batches - 1:
            self._end_of_epoch()
        return None

    def _end_of_epoch(self) -> None:
        # Here rather than in on_train_epoch_end: Lightning runs callbacks' epoch-end hooks
        # first, and the RunRecorder callback must see this epoch's numbers.
        epoch = self.current_epoch
        if self.batch_size:  # mini-batches: measure the whole training set once per epoch
            loss, acc = self.evaluate("train")
            self._record(0, loss)
            self._record(1, acc)
        last = self.trainer.max_epochs is not None and epoch + 1 >= self.trainer.max_epochs
        if (epoch + 1) % self.eval_every == 0 or last:
            self._record(2, self.evaluate("test")[1])

    def _record(self, column: int, value: torch.Tensor) -> None:
        self.history[self.current_epoch, column] = value

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, accuracy) of the current network on a whole split."""
        x, y = self.data.split(split)
        logits = self.net(x)
        return F.cross_entropy(logits, y), accuracy(logits, y)
