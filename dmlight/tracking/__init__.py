"""Experiment tracking: `loggers` (Lightning loggers from conf/logger/, W&B's mode), `wandb_logger` (the W&B
logger that continues its run after a crash), `wandb_log` (the W&B keys), `dashboard` (the W&B workspace)."""
