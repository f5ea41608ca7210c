"""The text of one dataset spec, `SOURCE[:WEIGHT]`: its parts, and the form a run records.

Imports nothing heavy (no datasets, no torch): the run config parses specs with it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def split_weight(text: str) -> tuple[str, float | None]:
    """(SOURCE, WEIGHT or None) of ``SOURCE[:WEIGHT]``."""
    # Only a trailing ":<number>" is a weight, so "bundled:sentiment" and "C:\data" stay whole.
    head, sep, tail = text.rpartition(":")
    if not sep or not head:
        return text, None
    try:
        weight = float(tail)
    except ValueError:
        return text, None
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"dataset spec {text!r}: mixing weight {tail!r} must be a positive "
                         f"finite number, e.g. {head}:0.5")
    return head, weight


def absolute_spec(text: str) -> str:
    """``text`` with a SOURCE that is an existing file or directory given as its absolute, normalized
    path (the weight kept): run_config.json then names the same data whatever directory the run is
    continued from. Names (bundled:..., a hub dataset) and paths that do not exist stay as typed
    (the data preparation reports those)."""
    try:
        source, weight = split_weight(text)
    except ValueError:
        return text
    path = Path(source).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name the system cannot look up: reported by the data checks
        return text
    if not exists or source.startswith("bundled:"):
        return text
    absolute = os.path.normpath(os.path.abspath(path))
    return absolute if weight is None else f"{absolute}:{text.rpartition(':')[2]}"
