"""LoRETTA adapters: config, the rep and adp layers, inject / merge / save / load / PEFT export.

Knows nn.Linear and Hugging Face LLaMA module names, not DeepSpeed.
"""
from .config import TARGET_PRESETS, LorettaConfig
from .inject import (adapter_layers, count_parameters, inject, is_injected, mark_trainable,
                     trainable_parameter_names)
from .io import adapter_state_dict, load_adapter, read_adapter_config, read_adapter_tensors, save_adapter
from .layers import LorettaAdpLinear, LorettaRepLinear
from .merge import merge, merge_and_unload, unmerge
from .peft_export import export_peft_lora, peft_lora_tensors

__all__ = ["LorettaConfig", "TARGET_PRESETS", "LorettaRepLinear", "LorettaAdpLinear", "inject",
           "is_injected", "mark_trainable", "trainable_parameter_names", "adapter_layers",
           "count_parameters", "merge", "unmerge", "merge_and_unload", "save_adapter",
           "load_adapter", "adapter_state_dict", "read_adapter_config", "read_adapter_tensors", "export_peft_lora",
           "peft_lora_tensors"]
