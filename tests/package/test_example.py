"""examples/probe_your_model.py: a user's own CNN with DistanceProbe, run as a user runs it."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "probe_your_model.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def run_example(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_help_names_every_option():
    done = run_example("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--epochs", "--train-rows", "--probe-rows", "--val", "--full-grid", "--every", "--out"):
        assert option in done.stdout


def test_missing_data_is_a_short_error(tmp_path):
    """No Fashion-MNIST anywhere (the Debian folder pointed elsewhere): a one-line error naming the data set."""
    code = ("import sys, runpy, dmlight.data.datasets as d; d.DEBIAN_FASHION_DIR = d.Path(sys.argv[1]); "
            "sys.argv = [sys.argv[2], *sys.argv[3:]]; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none"), str(EXAMPLE), "--data-dir",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith("probe_your_model: ") and "fashion" in done.stderr.lower()
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (make install adds it)")
def test_a_short_run_writes_the_probe_rows_and_the_figures(tmp_path):
    out = tmp_path / "probe"
    done = run_example("--epochs", "2", "--train-rows", "600", "--probe-rows", "64", "--val", "--quiet",
                       "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "probe.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "layer", "kind", "magnitude", "split", "unit", "accuracy", "change", "range_of"]
    # Both layers, both splits, at epoch 0 (before training), 1 and 2 (the end, on the coarse grid by default):
    # 34 scale + 34 clip + 28 offset points and a baseline per (layer, split, epoch).
    seen = {}
    for r in rows:
        seen.setdefault((r["layer"], r["split"], r["epoch"]), []).append(r)
    assert set(seen) == {(layer, split, epoch) for layer in ("features.0", "classifier.1")
                         for split in ("train", "val") for epoch in ("0", "1", "2")}
    assert all(len(v) == 1 + 34 + 34 + 28 for v in seen.values())
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["emergence_classifier.1.png", "emergence_features.0.png", "sensitivity_ratio.png"]
    assert all((out / "figures" / name).stat().st_size > 10_000 for name in figures)
    for path in (out / "probe.csv", out / "figures" / "sensitivity_ratio.png"):
        assert str(path) in done.stdout  # it says where its results are
