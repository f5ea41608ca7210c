"""LoRETTA adapters: config, the rep and adp layers, inject / merge / save / load / PEFT export.

Knows nn.Linear and Hugging Face LLaMA module names, not DeepSpeed. Names are imported from their
modules on first use, so ``from loretta_ds.adapters.config import ...`` stays free of torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "config": ("TARGET_PRESETS", "LorettaConfig"),
    "injection": ("adapter_layers", "count_parameters", "inject", "is_injected", "mark_trainable",
               "trainable_parameter_names"),
    "io": ("adapter_state_dict", "load_adapter", "read_adapter_config", "read_adapter_tensors", "save_adapter"),
    "layers": ("LorettaAdpLinear", "LorettaRepLinear"),
    "merging": ("merge", "merge_and_unload", "unmerge"),
    "peft_export": ("export_peft_lora", "peft_lora_tensors"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
