"""Training a run: `module` (the LightningModule and ensembles), `callbacks` (the run recorder), `checkpoints`
(one per member), `devices` (GPU pinning, CPU threads), `progress` (lines), `multirun` (a sweep's failures)."""
