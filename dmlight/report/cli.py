"""`python -m dmlight.report <dir> ... [report.<option>=<value> ...]`: folders are positional; report.out=,
report.wandb=, report.pairs= and report.<threshold>= override."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from dmlight.report.build import build_report
from dmlight.report.thresholds import THRESHOLDS, Thresholds


def usage() -> str:
    """The help: what the report reads and writes, how claims are scored, every threshold with its default and why."""
    import dmlight.report  # here: the package's __init__ imports this module (its `main`)
    from dmlight.report import claims, thresholds

    return "\n".join([dmlight.report.__doc__, claims.__doc__, thresholds.__doc__,
                      "Thresholds (report.<name>=<value> sets one):", THRESHOLDS.text(), ""])


def _parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise SystemExit(f"report: {key}={value!r} is not a boolean; use {key}=true or {key}=false")


def _parse_pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, value.split(",")):
        if item.count(":") != 1:
            raise SystemExit(f"report: pair {item!r} in report.pairs is not 'A:B'; "
                             "e.g. report.pairs=ReLU:Abs,ReLU2:ReLU")
        pairs.append(tuple(s.strip() for s in item.split(":")))
    return pairs


def main(argv=None) -> Path:
    """CLI: folders are positional; report.out=, report.wandb=, report.pairs= and report.<threshold>= override."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    dirs, out, use_wandb, pairs, th = [], None, False, [], {}
    names = set(Thresholds().values())
    for arg in argv:
        if "=" not in arg:
            dirs.append(arg)
            continue
        key, value = arg.split("=", 1)
        short = key.removeprefix("report.")
        if short == "out":
            out = value
        elif short == "wandb":
            use_wandb = _parse_bool(key, value)
        elif short == "pairs":
            pairs = _parse_pairs(value)
        elif short in names:
            try:
                th[short] = float(value)
            except ValueError:
                raise SystemExit(f"report: {key}={value!r} is not a number") from None
        else:
            raise SystemExit(f"report: unknown option {key!r}; accepted: report.out, report.wandb, report.pairs, "
                             + ", ".join(f"report.{n}" for n in sorted(names)))
    return build_report(dirs, out=out, wandb=use_wandb, pairs=pairs, thresholds=replace(THRESHOLDS, **th))
