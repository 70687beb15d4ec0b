"""dmlight: reproduce "Neural Networks Use / Learn Distance Metrics" (A. Oursland) with Hydra + Lightning."""
__all__ = ["Run", "load_run", "DistanceProbe"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import dmlight.devices` or the report does not pay for torch and Lightning.
    if name == "DistanceProbe":
        from dmlight.probe import DistanceProbe

        return DistanceProbe
    if name in __all__:
        from dmlight import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'dmlight' has no attribute {name!r}")
