"""How progress lines name things: a training rate and a list of seeds, readably."""
from __future__ import annotations


def format_rate(epochs_per_second: float) -> str:
    """'14 ep/s', '4.5 ep/s', or per-epoch seconds below one epoch a second (a 20-seed ensemble on 60,000 rows).

    Example:
        >>> format_rate(14.2), format_rate(4.54), format_rate(0.222), format_rate(0.004)
        ('14 ep/s', '4.5 ep/s', '4.5 s/epoch', '250 s/epoch')
    """
    if epochs_per_second >= 10:
        return f"{epochs_per_second:.0f} ep/s"
    if epochs_per_second >= 1:
        return f"{epochs_per_second:.1f} ep/s"
    seconds = 1 / max(epochs_per_second, 1e-9)
    return f"{seconds:.1f} s/epoch" if seconds < 10 else f"{seconds:.0f} s/epoch"


def format_seconds(seconds: float) -> str:
    """A duration as a person reads it.

    Example:
        >>> format_seconds(42.4), format_seconds(754), format_seconds(11520)
        ('42s', '12.6 min', '3.2 h')
    """
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def seed_range(seeds) -> str:
    """Seeds as runs of consecutive numbers.

    Example:
        >>> seed_range(range(20)), seed_range([3, 7, 11]), seed_range([0, 1, 2, 5, 8, 9])
        ('0-19', '3,7,11', '0-2,5,8-9')
    """
    seeds, runs = sorted(int(s) for s in seeds), []
    for s in seeds:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
