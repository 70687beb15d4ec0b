"""dmlight: reproduce "Neural Networks Use / Learn Distance Metrics" (A. Oursland) with Hydra + Lightning."""
from dmlight.runs import Run, load_run

__all__ = ["Run", "load_run"]
__version__ = "0.1.0"
