import gzip
import os
import socket

import numpy as np
import pytest
import torch

from dmlight.data.datasets import (DEBIAN_FASHION_DIR, IDX_FILES, DataError, MNIST_MEAN, MNIST_STD, _arrays,
                          load_data, read_idx)


def write_idx(path, array: np.ndarray, truncate: int = 0):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(payload[: len(payload) - truncate])


def test_mnist5k_is_a_deterministic_stratified_4000_1000_split():
    s = load_data("mnist5k")
    assert s.x_train.shape == (4000, 784) and s.x_test.shape == (1000, 784)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.y_train.bincount().tolist() == [400] * 10 and s.y_test.bincount().tolist() == [100] * 10
    assert s.x_train.min() == 0 and s.x_train.max() == 255  # raw pixels, as the authors' code ran
    _arrays.cache_clear()
    again = load_data("mnist5k")
    assert torch.equal(again.x_test, s.x_test) and torch.equal(again.y_train, s.y_train)
    # The two splits are disjoint digits.
    train_rows = {r.tobytes() for r in s.x_train.numpy()}
    assert not any(r.tobytes() in train_rows for r in s.x_test.numpy())


def test_standardize_is_the_papers_normalization():
    raw, std = load_data("mnist5k", "raw"), load_data("mnist5k", "standardize")
    assert torch.allclose(std.x_train, (raw.x_train / 255 - MNIST_MEAN) / MNIST_STD)
    assert std.x_train.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, rel=1e-6)


def test_unknown_dataset_and_preprocess_name_the_accepted_values():
    with pytest.raises(DataError, match="accepted: mnist, mnist5k, fashion_mnist, fashion5k, synthetic"):
        load_data("cifar")
    with pytest.raises(DataError, match="accepted: raw, standardize"):
        load_data("synthetic", "minmax")


def test_idx_files_are_read_from_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = rng.integers(0, 256, (30, 28, 28))
    write_idx(raw / IDX_FILES["train_images"], images)
    write_idx(raw / IDX_FILES["train_labels"], np.arange(30) % 10)
    with gzip.open(raw / (IDX_FILES["test_images"] + ".gz"), "wb") as f:  # gzipped works too
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (5, 28, 28))
                + images[:5].astype(np.uint8).tobytes())
    write_idx(raw / IDX_FILES["test_labels"], np.arange(5))
    s = load_data("mnist", data_dir=tmp_path, download=False)
    assert s.x_train.shape == (30, 784) and s.x_test.shape == (5, 784)
    assert torch.equal(s.x_train[3], torch.from_numpy(images[3].reshape(-1)).float())
    assert s.y_test.tolist() == [0, 1, 2, 3, 4]


def test_missing_mnist_offline_is_a_short_error_not_a_hang(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DataError) as err:
        load_data("mnist", data_dir=tmp_path / "nowhere", download=True)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "download failed" in msg
    assert all(name in msg for name in IDX_FILES.values())
    assert "data=mnist5k" in msg and "data=fashion_mnist" in msg
    assert "\n" not in msg and len(msg) < 700


def test_missing_mnist_with_download_off(tmp_path):
    with pytest.raises(DataError, match="downloading is off"):
        load_data("mnist", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncated", "bad_header", "bad_gzip"])
def test_corrupt_data_files_are_a_clear_error(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for key, stem in IDX_FILES.items():
        write_idx(raw / stem, np.zeros((4, 28, 28)) if "images" in key else np.zeros(4))
    target = raw / IDX_FILES["train_images"]
    if damage == "truncated":
        write_idx(target, np.zeros((4, 28, 28)), truncate=100)
        expected = "truncated or corrupt: header says \\(4, 28, 28\\)"
    elif damage == "bad_header":
        target.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
        expected = "not an IDX file"
    else:
        target.unlink()
        (raw / (IDX_FILES["train_images"] + ".gz")).write_bytes(b"\x1f\x8b\x08\x00garbage")
        expected = "corrupt or truncated"
    with pytest.raises(DataError, match=expected) as err:
        load_data("mnist", data_dir=tmp_path, download=False)
    assert "download it again" in str(err.value)


def test_label_count_mismatch_is_an_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for key, stem in IDX_FILES.items():
        write_idx(raw / stem, np.zeros((4, 28, 28)) if "images" in key else np.zeros(3 if key == "test_labels" else 4))
    with pytest.raises(DataError, match="4 test images but 3 labels"):
        load_data("mnist", data_dir=tmp_path, download=False)


def test_fashion_mnist_from_debians_files(tmp_path):
    if not DEBIAN_FASHION_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must test Fashion-MNIST on the real files: install dataset-fashion-mnist "
                        f"(`make install` does as root) so that {DEBIAN_FASHION_DIR} exists")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    s = load_data("fashion_mnist", data_dir=tmp_path, download=False)
    assert s.x_train.shape == (60000, 784) and s.x_test.shape == (10000, 784)
    assert s.y_train.bincount().tolist() == [6000] * 10 and s.y_test.bincount().tolist() == [1000] * 10
    assert s.x_train.max() == 255
    assert read_idx(DEBIAN_FASHION_DIR / "t10k-labels-idx1-ubyte.gz")[:5].tolist() == s.y_test[:5].tolist()
