"""The package list, computed: dmlight/ and its subpackages, and the top-level conf/ shipped inside the wheel as
dmlight/conf (each config group a package of YAML files), where an installed dmlight finds it (dmlight/config.py).
Everything else about the package is in pyproject.toml."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CONF_GROUPS = sorted(".".join(("dmlight.conf", *d.relative_to(HERE / "conf").parts))
                     for d in (HERE / "conf").rglob("*") if d.is_dir() and any(d.glob("*.yaml")))

setup(packages=[*find_packages(include=["dmlight", "dmlight.*"]), "dmlight.conf", *CONF_GROUPS],
      package_dir={"dmlight.conf": "conf"},
      package_data={"dmlight.conf": ["*.yaml"], **{group: ["*.yaml"] for group in CONF_GROUPS}})
