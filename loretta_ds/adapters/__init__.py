"""LoRETTA adapters: config, the rep and adp layers, inject / merge / save / load / PEFT export.

Knows nn.Linear and Hugging Face LLaMA module names, not DeepSpeed. Names are imported from their
modules on first use, so ``from loretta_ds.adapters.config import ...`` stays free of torch.
"""
from __future__ import annotations

from ..lazy_names import lazy_names

_WHERE = {
    "config": ("TARGET_PRESETS", "LorettaConfig"),
    "injection": ("adapter_layers", "count_parameters", "inject", "is_injected", "mark_trainable",
               "trainable_parameter_names"),
    "io": ("adapter_state_dict", "load_adapter", "read_adapter_config", "read_adapter_tensors", "save_adapter"),
    "layers": ("LorettaAdpLinear", "LorettaRepLinear"),
    "merging": ("merge", "merge_and_unload", "unmerge"),
    "peft_export": ("export_peft_lora", "peft_lora_tensors"),
}
__all__, __getattr__ = lazy_names(__name__, _WHERE)
