"""The one LightningModule that trains any network of both papers, full-batch."""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
import pytorch_lightning as pl
from torch import nn
from torch.func import stack_module_state
from torchmetrics.functional.classification import multiclass_accuracy

from dmlight.data.datasets import Splits
from dmlight.models.layers import Abs, Neg, OffsetL2, offset_l2, stacked_linear
from dmlight.errors import ConfigError


class Batches:
    """The training split as batches: one full batch (the papers), or shuffled mini-batches.

    The tensors stay where they are (already on the training device), so an epoch costs
    no copies. Epoch e's order is drawn from (shuffle_seed, e) alone: a resumed run sees the
    batches an uninterrupted one would, and every seed (every ensemble member) the same ones.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, shuffle_seed: int = 0,
                 epoch=lambda: 0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle_seed, self.epoch = int(shuffle_seed), epoch  # epoch: a callable, the current epoch

    def __len__(self) -> int:
        if not self.batch_size:
            return 1
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        if not self.batch_size:
            yield self.x, self.y
            return
        generator = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + self.epoch())
        order = torch.randperm(len(self.x), generator=generator).to(self.x.device)
        for i in range(0, len(self.x), self.batch_size):
            idx = order[i: i + self.batch_size]
            yield self.x[idx], self.y[idx]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy as a fraction (torchmetrics; argument checks off, the shapes are ours)."""
    return multiclass_accuracy(logits, y, num_classes=logits.shape[-1], average="micro",
                               validate_args=False)


def member_accuracies(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of every member at once: logits (members, n, classes) -> (members,)
    (a solo network's (n, classes) -> a scalar).

    The per-epoch path: one argmax for all members, where torchmetrics would take a call
    per member. It counts exactly what `accuracy` (torchmetrics micro accuracy) counts; a
    test holds the two equal, and the final summary uses `accuracy`.
    """
    return (logits.argmax(-1) == y).sum(-1) / y.shape[0]


# Parameter-free parts made of single IEEE operations (max, abs, multiply, add, clamp): their
# SIMD and scalar code give the same bits, so they can act on all members' stack at once.
EXACT_ELEMENTWISE = (nn.ReLU, Abs, nn.LeakyReLU, Neg)


class Ensemble(nn.Module):
    """Several networks of one architecture trained as one stacked model (one member per seed).

    Parameters are stacked along a leading member axis and the members' own `Network` is
    walked part by part: a Linear runs for every member at once (`stacked_linear`: on a GPU the
    shared input goes through one matrix product, on a CPU through each member's own `F.linear`),
    OffsetL2 broadcasts over the member axis, and the parameter-free parts (activations, Neg)
    are the template's own modules. No architecture is written twice, and on a CPU every
    member's numbers are bit-identical to its solo run's.

    Example:
        >>> from dmlight.models.networks import build_model
        >>> nets = [build_model("mlp", "relu") for _ in range(3)]
        >>> Ensemble(nets)(torch.zeros(5, 784)).shape
        torch.Size([3, 5, 10])
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        params, _ = stack_module_state(members)
        self.param_names = list(params)
        for name, value in params.items():
            self.register_parameter(name.replace(".", "__"), nn.Parameter(value.detach().clone()))
        # Kept out of the module tree: only its structure (and its parameter-free parts) are used.
        self._template = [copy.deepcopy(members[0])]
        self.n_members = len(members)
        self.name = members[0].name
        for name, layer in self._template[0].named_children():
            if any(True for _ in layer.parameters()) and not isinstance(layer, (nn.Linear, OffsetL2)):
                raise TypeError(f"Ensemble has no stacked form of {name} ({type(layer).__name__}); "
                                "train these seeds one by one (seed=<s>)")

    @property
    def site(self) -> str:
        return self._template[0].site

    @property
    def widths(self) -> tuple[int, ...]:
        """The members' hidden layers' widths (Network.widths)."""
        return self._template[0].widths

    def stacked(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n.replace(".", "__")) for n in self.param_names}

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of every member, (members, n, classes). `params` replaces the stacked
        parameters (a group of members from `groups`)."""
        params = self.stacked() if params is None else params
        per_member = x.device.type == "cpu"  # see below
        h = x
        for name, layer in self._template[0].named_children():
            if isinstance(layer, nn.Linear):
                h = stacked_linear(h, params[f"{name}.weight"], params.get(f"{name}.bias"))
            elif isinstance(layer, OffsetL2):
                mu, alpha = params[f"{name}.mu"], params[f"{name}.alpha"]
                # Per member on a CPU: its row blocks (and so its sums) are then a solo run's.
                h = torch.stack([offset_l2(*one) for one in zip(h, mu, alpha)]) if per_member \
                    else offset_l2(h, mu, alpha)
            elif per_member and not isinstance(layer, EXACT_ELEMENTWISE):
                # Sigmoid, tanh, GELU round differently in their SIMD and scalar paths, and a
                # member's elements fall on other vector boundaries inside the stack: per member,
                # on a CPU, each gets the very call its solo run makes.
                h = torch.stack([layer(member) for member in h])
            else:
                h = layer(h)
        return h

    def groups(self, size: int) -> list[dict[str, torch.Tensor]] | None:
        """The members in groups of `size`, each group's parameters as leaf tensors that view
        this ensemble's own: a forward and backward pass per group keeps its activations in
        the CPU's cache. `gather_grads` writes the groups' gradients back. None when one group
        holds every member (then the ensemble's own parameters are used)."""
        if size >= self.n_members:
            return None
        return [{n: p[a: a + size].detach().requires_grad_() for n, p in self.stacked().items()}
                for a in range(0, self.n_members, size)]

    def gather_grads(self, groups: list[dict[str, torch.Tensor]]) -> None:
        for n, p in self.stacked().items():
            p.grad = torch.cat([g[n].grad for g in groups])

    def member(self, i: int) -> nn.Module:
        """Member i as a plain network (a copy, on the ensemble's device)."""
        net = copy.deepcopy(self._template[0])
        net.load_state_dict({n: p[i].detach().clone() for n, p in self.stacked().items()}, strict=False)
        return net.to(next(self.parameters()).device)


class DistanceModule(pl.LightningModule):
    """Cross-entropy on the network output as logits, optimizer from config.

    `net` is one Network, or an Ensemble whose members train side by side: the loss is the
    sum of the members' own losses, so each member gets exactly its own gradient.
    Every epoch records (train_loss, train_acc, test_acc) per member into `self.history`
    (members x epochs x 3), a tensor on the training device, so nothing forces a device sync
    per step; the RunRecorder callback flushes it to metrics.csv and the loggers.
    """

    def __init__(self, net: nn.Module, data: Splits, optimizer, batch_size: int | None = None,
                 eval_every: int = 1, shuffle_seed: int = 0, member_group: int | None = None):
        super().__init__()
        self.net = net
        self.data = data
        self.optimizer_factory = optimizer  # a callable params -> Optimizer (Hydra partial)
        self.batch_size, self.eval_every = batch_size, max(1, int(eval_every))
        self.shuffle_seed = shuffle_seed
        self.automatic_optimization = False  # one plain SGD step per batch; less overhead
        self.n_members = net.n_members if isinstance(net, Ensemble) else 1
        if member_group is not None and (not isinstance(member_group, int) or member_group < 1):
            raise ConfigError(f"run.member_group={member_group!r}: accepted a whole number >= 1 (members "
                              "per forward/backward pass) or null to choose by device; e.g. run.member_group=4")
        self.member_group = member_group  # ensemble members per forward/backward; None: auto in setup
        self.history: torch.Tensor | None = None
        self.retired: dict[int, dict[str, torch.Tensor]] = {}  # retired member -> the parameters it keeps

    def retire(self, member: int) -> None:
        """Stop member `member` (its loss became non-finite): its parameters stop changing. The
        others train on exactly as before: members share no arithmetic (see Ensemble)."""
        if isinstance(self.net, Ensemble):
            self.retired[member] = {n: p[member].detach().clone() for n, p in self.net.stacked().items()}

    @torch.no_grad()
    def _restore_retired(self) -> None:
        stacked = self.net.stacked()
        for member, params in self.retired.items():
            for n, value in params.items():
                stacked[n][member].copy_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with a leading member axis: (members, n, classes)."""
        out = self.net(x)
        return out if isinstance(self.net, Ensemble) else out.unsqueeze(0)

    def members(self) -> list[nn.Module]:
        """Each member as a plain network."""
        if isinstance(self.net, Ensemble):
            return [self.net.member(i) for i in range(self.n_members)]
        return [self.net]

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())

    def setup(self, stage: str) -> None:
        self.data = self.data.to(self.device)
        try:
            max_epochs = self.trainer.max_epochs
        except RuntimeError:  # setup called by hand, with no Trainer attached (Lightning raises)
            max_epochs = 0
        self.history = torch.full((self.n_members, max(max_epochs, 1), 3), float("nan"), device=self.device)
        if self.member_group is None:
            rows = self.batch_size or len(self.data.x_train)
            self.member_group = auto_member_group(self.net, rows, self.device)

    def train_dataloader(self):
        return Batches(self.data.x_train, self.data.y_train, self.batch_size, self.shuffle_seed,
                       lambda: self.current_epoch)

    @staticmethod
    def _losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per member: a scalar for a solo network's (n, classes) logits, one
        per member for (members, n, classes). A member's loss is log_softmax then its own
        nll_loss, which is what F.cross_entropy computes, so members match solo runs bit for bit."""
        if logits.ndim == 2:
            return F.cross_entropy(logits, y)
        log_p = F.log_softmax(logits, -1)
        return torch.stack([F.nll_loss(member, y) for member in log_p])

    def _passes(self):
        """What one training step runs forward and backward: the network, or groups of
        ensemble members (see Ensemble.groups), and the groups to gather gradients from."""
        groups = self.net.groups(self.member_group) if isinstance(self.net, Ensemble) else None
        if groups is None:
            return [self.net], None
        return [functools.partial(self.net, params=g) for g in groups], groups

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        passes, groups = self._passes()
        losses, accs = [], []
        for net in passes:
            # net(x), not self(x): a solo network's logits stay (n, classes), so its backward
            # graph is exactly a plain loop's (no member axis to add and take away again).
            logits = net(x)
            part = self._losses(logits, y)
            # Lightning's own backward and step: they keep precision plugins, DDP and the step
            # count right. Skipping them for the raw optimizer measured < 0.3% faster; not worth it.
            self.manual_backward(part if part.ndim == 0 else part.sum())
            losses.append(part.detach().reshape(-1))
            accs.append(member_accuracies(logits.detach(), y).reshape(-1))
        if groups is not None:
            self.net.gather_grads(groups)
        opt.step()
        if self.retired:
            self._restore_retired()
        if not self.batch_size:
            # Full batch: this forward pass already measured the whole training set.
            self._record(0, losses[0] if len(losses) == 1 else torch.cat(losses))
            self._record(1, accs[0] if len(accs) == 1 else torch.cat(accs))
        return None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The epoch's own measurements after its last batch: Lightning runs callbacks' epoch-end
        # hooks before the module's, and the RunRecorder callback must see this epoch's numbers.
        if batch_idx == self.trainer.num_training_batches - 1:
            self._end_of_epoch()

    def _end_of_epoch(self) -> None:
        epoch = self.current_epoch
        if self.batch_size:  # mini-batches: measure the whole training set once per epoch
            loss, acc = self.evaluate("train")
            self._record(0, loss)
            self._record(1, acc)
        last = self.trainer.max_epochs is not None and epoch + 1 >= self.trainer.max_epochs
        if (epoch + 1) % self.eval_every == 0 or last:
            self._record(2, self.evaluate("test", loss=False)[1])

    def _record(self, column: int, values: torch.Tensor) -> None:
        self.history[:, self.current_epoch, column] = values

    @torch.no_grad()
    def evaluate(self, split: str, loss: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(loss, accuracy) per member of the current network(s) on a whole split.

        loss=False skips the loss (None in its place): the test split needs only accuracy.
        """
        x, y = self.data.split(split)
        passes, _ = self._passes()
        logits = [net(x) for net in passes]
        logits = logits[0] if len(logits) == 1 else torch.cat(logits)
        if logits.ndim == 2:
            logits = logits.unsqueeze(0)
        return (self._losses(logits, y) if loss else None), member_accuracies(logits, y)


def auto_member_group(net: nn.Module, rows: int, device: torch.device, cache_bytes: int = 8 << 20) -> int:
    """Ensemble members per forward/backward pass: all of them on a GPU; on a CPU as many as
    keep the hidden activations (rows x the hidden layers' widths summed) within ~8 MB, the size
    that trains fastest per member on a CPU (bench/ensemble_speed.py; docs/benchmarks.md). OffsetL2's
    larger terms live only inside its own cache-sized row blocks (see offset_l2), so they do not count here."""
    if not isinstance(net, Ensemble):
        return 1
    if torch.device(device).type != "cpu":
        return net.n_members
    return max(1, min(net.n_members, cache_bytes // (4 * rows * sum(net.widths))))
