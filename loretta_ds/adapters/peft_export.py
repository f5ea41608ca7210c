"""Write a LoRETTA_rep adapter as a standard PEFT LoRA adapter.

rep's update (alpha / r) * (A B)^T is a rank-r product, so it is exactly a LoRA adapter with
lora_A.weight = A^T (r, d_in) and lora_B.weight = B^T (d_out, r) under the same alpha and r.
Trained norm weights travel as PEFT ``modules_to_save``, so stock PEFT reproduces the model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..file_io import write_safetensors
from .config import LorettaConfig, check_mergeable
from .injection import adapter_layers, trainable_parameter_names
from .layers import LorettaRepLinear

# A PEFT LoRA adapter directory's files (the names PEFT reads; its save_pretrained writes them too).
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"

# PEFT wraps the base model twice (PeftModel.base_model is a LoraModel, whose .model is the base),
# so every parameter of a PEFT checkpoint is named with this prefix.
PEFT_PREFIX = "base_model.model."


def peft_lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA tensors (and trained norm weights) of an adapted rep model."""
    cfg: LorettaConfig | None = getattr(model, "loretta_config", None)
    if cfg is None:
        raise ValueError("this model has no LoRETTA adapter; call inject(model, cfg) or load_adapter first")
    check_mergeable(cfg.method)
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in adapter_layers(model).items():
            assert isinstance(layer, LorettaRepLinear)
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.loretta_A().T.contiguous().cpu()
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.loretta_B().T.contiguous().cpu()
        params = dict(model.named_parameters())
        for name in trainable_parameter_names(model):
            if "loretta_" not in name:
                tensors[PEFT_PREFIX + name] = params[name].detach().contiguous().cpu()
    return tensors


def peft_lora_config(cfg: LorettaConfig, norm_parameter_names: list[str], base_name: str | None) -> dict:
    """PEFT's adapter_config.json for a rep adapter: same r and alpha, so the same scale alpha / r;
    trained norms (parameter names like ``model.norm.weight``) become ``modules_to_save``."""
    norm_modules = sorted({name.rsplit(".", 2)[-2] for name in norm_parameter_names})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": norm_modules or None,
    }


def export_peft_lora(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that
    ``peft.PeftModel.from_pretrained(base, directory)`` loads with no loretta_ds import."""
    tensors = peft_lora_tensors(model)
    norm_names = [n for n in trainable_parameter_names(model) if "loretta_" not in n]
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config = peft_lora_config(model.loretta_config, norm_names, base_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / PEFT_WEIGHTS, tensors, metadata={"format": "pt"})
    (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory
