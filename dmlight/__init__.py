"""dmlight: reproduce "Neural Networks Use / Learn Distance Metrics" (A. Oursland) with Hydra + Lightning."""
__all__ = ["Run", "load_run", "DistanceProbe"]


def _version() -> str:
    """The installed package's version (pyproject.toml is its one source); a checkout that was never
    installed reads pyproject.toml itself."""
    from importlib import metadata

    try:
        return metadata.version("dmlight")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found[1] if found else "unknown"


__version__ = _version()


def __getattr__(name):
    # Lazy, so `import dmlight.training.devices` or the report does not pay for torch and Lightning.
    if name == "DistanceProbe":
        from dmlight.perturbation.probe import DistanceProbe

        return DistanceProbe
    if name in __all__:
        from dmlight.runs import load

        return getattr(load, name)
    raise AttributeError(f"module 'dmlight' has no attribute {name!r}")
