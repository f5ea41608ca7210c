"""Benchmarks of LoRETTA against LoRA, a dense adapter, the reference package and a frozen floor.

``run_bench(BenchConfig(...))`` builds every contender around one random LLaMA-architecture base,
times them alternately in one process and returns a ``BenchReport`` (markdown, JSON, PNG).
"""
from .config import BenchConfig
from .runner import run_bench

__all__ = ["BenchConfig", "run_bench"]
