"""Every docstring example in dmlight runs (those marked +SKIP need a trained run or a GPU)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dmlight

MODULES = sorted(m.name for m in pkgutil.walk_packages(dmlight.__path__, "dmlight.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_every_module_is_checked():
    assert {"dmlight.perturbation.site", "dmlight.training.module", "dmlight.runs.load", "dmlight.report.claims"} <= set(MODULES)
