"""Runs on disk: `layout` (where a run lives, its files, identity and locks; torch-free), `load` (load_run for
notebooks), `provenance` (what produced a run's numbers)."""
