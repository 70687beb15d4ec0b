"""Shared by the benchmarks: write a result as JSON (the folder made if needed)."""
import json
from pathlib import Path


def save(result: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
