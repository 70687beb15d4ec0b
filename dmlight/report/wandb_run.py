"""The report's W&B run: its tables, figures and claim statuses in one run of job type 'report'. wandb is imported
only when a run is logged; `wandb_payload` says what would be logged without it."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dmlight.tracking.loggers import wandb_mode
from dmlight.report.load import log
from dmlight.tracking.wandb_log import table_key


def wandb_payload(tables: dict, figures: list[Path], card: pd.DataFrame) -> dict:
    """What the report logs to W&B, without touching wandb: {"tables": {name: frame}, "images": {name: png path},
    "summary": {"claim/USE-1": status, ...}}.

        >>> card = pd.DataFrame({"paper": ["USE"], "claim_id": [1], "status": ["replicated"]})
        >>> wandb_payload({}, [Path("figures/perturbation.png")], card)["summary"]
        {'claim/USE-1': 'replicated'}
    """
    return {"tables": {**tables, "scorecard": card},
            "images": {p.stem: p for p in figures},
            "summary": {f"claim/{r.paper}-{r.claim_id}": r.status for r in card.itertuples()}}


def log_to_wandb(payload: dict, out: Path, group: str, config: dict) -> None:
    """Log the payload into one W&B run (job_type 'report'); wandb is imported only here."""
    import wandb
    mode = wandb_mode()
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dmlight"), job_type="report", group=group,
                     dir=str(out), mode=mode, config=config, reinit="create_new")
    logged = {}
    for name, df in payload["tables"].items():
        clean = df.astype(object).where(df.notna(), None)  # NaN is not JSON; W&B shows None as empty
        logged[table_key(name)] = wandb.Table(columns=[str(c) for c in df.columns], data=clean.values.tolist())
    for name, path in payload["images"].items():
        logged[f"figure/{name}"] = wandb.Image(str(path))
    run.log(logged)
    for key, value in payload["summary"].items():
        run.summary[key] = value
    run.finish()
    log(f"W&B: logged {len(payload['tables'])} tables and {len(payload['images'])} figures (mode {mode})")
