"""Where DeepSpeed's JIT-built ops (CPU Adam, the CPU all-reduce) are cached, and whether a run
still has to build CPU Adam (minutes, said before it starts).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def use_environment_extension_cache() -> Path:
    """Keep DeepSpeed's JIT-built ops (CPU Adam, the CPU all-reduce) in a cache of this Python
    environment, unless TORCH_EXTENSIONS_DIR says otherwise.

    torch's default cache (~/.cache/torch_extensions/py311_cpu) is shared by every environment,
    but an op's build is keyed to the DeepSpeed sources it was compiled from: two venvs then
    rebuild it in turn, minutes each time. Called before deepspeed loads any op; every rank of
    an environment computes the same directory.
    """
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        tag = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
        version = f"py{sys.version_info.major}{sys.version_info.minor}"
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCH_EXTENSIONS_DIR"] = str(root / "loretta_ds" / "torch_extensions" / f"{version}-{tag}")
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def pending_cpu_adam_build(ds_config: dict) -> str | None:
    """What to tell the user before DeepSpeed compiles its CPU Adam op (an optimizer offloaded to
    the CPU, first run in this environment): otherwise the run is silent for minutes."""
    offload = (ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
    if offload != "cpu":
        return None
    cache = use_environment_extension_cache()
    if any(cache.glob("cpu_adam*/cpu_adam*.so")):
        return None
    return (f"building DeepSpeed's CPU Adam op (first run in this Python environment only; about 1-2 minutes "
            f"on 2 idle cores, longer on a busy machine) into {cache}")
