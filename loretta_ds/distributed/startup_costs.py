"""Two start-up costs that ``deepspeed.initialize`` pays on every rank and a LoRETTA run does not need.

Measured with cProfile on 2 CPU cores (``launch/train.py --ds_config ds_configs/zero3_offload.json``,
the built-in model, DeepSpeed 0.19.8, torch 2.13): of a 7.8 s ``deepspeed.initialize``, 3.9 s went to
three calls of py-cpuinfo and 3.7 s to importing DeepSpeed's Muon optimizer.

- py-cpuinfo's ``get_cpu_info()`` starts a fresh Python interpreter on every call (about 1.3 s), and
  DeepSpeed calls it three times per rank: CPU Adam's vendor check and the op builder's ``-march`` and
  SIMD flags. The CPU does not change under a running process, so the first answer is kept.
- ZeRO's optimizer check imports ``deepspeed.runtime.zero.muon.muon_optimizer`` only to learn whether
  the optimizer is a Muon one. That module decorates its kernels with ``torch.compile``, which imports
  torch's inductor compiler (about 2 s). When the run's optimizer is not Muon, the module is imported
  once with TorchDynamo turned off (``TORCHDYNAMO_DISABLE``, read by ``torch.compile`` when it
  decorates): its kernels stay plain functions that this run never calls, and the check is free.
"""
from __future__ import annotations

import functools
import os
import sys

MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def remember_cpu_info() -> None:
    """Make py-cpuinfo answer from memory after its first call in this process."""
    import cpuinfo

    if not hasattr(cpuinfo.get_cpu_info, "cache_info"):
        cpuinfo.get_cpu_info = functools.cache(cpuinfo.get_cpu_info)


def uses_muon(ds_config: dict) -> bool:
    optimizer_type = str((ds_config.get("optimizer") or {}).get("type", ""))
    return "muon" in optimizer_type.lower()


def import_muon_uncompiled(ds_config: dict) -> None:
    """Import DeepSpeed's Muon module with torch.compile off, unless the run optimizes with Muon."""
    if uses_muon(ds_config) or MUON_MODULE in sys.modules:
        return
    previous = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        __import__(MUON_MODULE)
    except ImportError:  # a DeepSpeed without Muon: nothing to avoid
        pass
    finally:
        if previous is None:
            os.environ.pop("TORCHDYNAMO_DISABLE", None)
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = previous


def avoid_startup_costs(ds_config: dict) -> None:
    remember_cpu_info()
    import_muon_uncompiled(ds_config)
