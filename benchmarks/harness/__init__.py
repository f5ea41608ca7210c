"""Benchmarks of LoRETTA against LoRA, a dense adapter, the reference package and a frozen floor.

``run_bench(BenchConfig(...))`` builds every contender around one random LLaMA-architecture base,
times them alternately in one process and returns a ``BenchReport`` (markdown, JSON, PNG).
"""
from __future__ import annotations

from .config import BenchConfig

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name: str):
    # The runner imports torch; the command line's help needs only the config.
    if name == "run_bench":
        from .runner import run_bench

        return run_bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
