"""loretta_ds: LoRETTA tensor-train fine-tuning of LLaMA-2 under DeepSpeed ZeRO-3.

The public API below is imported on first use (PEP 562), not with the package: the command line
imports ``loretta_ds`` for every command, and ``loretta-ds --help`` should not wait for torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Exit status of a run stopped by SIGUSR1/SIGTERM after checkpointing (EX_TEMPFAIL): the SLURM
# scripts requeue on it.
PREEMPTED_EXIT_CODE = 75

_FROM_ADAPTERS = ("LorettaConfig", "inject", "merge", "unmerge", "merge_and_unload", "save_adapter",
                  "load_adapter", "count_parameters", "export_peft_lora")

# LoRETTA as a PEFT method (loretta_ds.integrations.peft): the config classes, and the explicit,
# idempotent registration with PEFT that PeftModel.from_pretrained needs in a fresh process.
_FROM_PEFT_INTEGRATION = {"LorettaRepConfig": "LorettaRepConfig", "LorettaAdpConfig": "LorettaAdpConfig",
                          "register_peft": "register"}

__all__ = [*_FROM_ADAPTERS, *_FROM_PEFT_INTEGRATION, "PREEMPTED_EXIT_CODE"]


def __getattr__(name: str):
    if name in _FROM_ADAPTERS:
        value = getattr(importlib.import_module(".adapters", __name__), name)
        globals()[name] = value
        return value
    if name in _FROM_PEFT_INTEGRATION:
        module = importlib.import_module(".integrations.peft", __name__)
        value = getattr(module, _FROM_PEFT_INTEGRATION[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
