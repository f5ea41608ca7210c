"""The peft-lora export: a LoRETTA_rep adapter written as a standard PEFT LoRA adapter.

Computed from the adapter file alone (no model): for each target module,
``base_model.model.<module>.lora_A.weight`` (r, in) = A^T and ``...lora_B.weight`` (out, r) = B^T,
with PEFT's scale lora_alpha / r equal to LoRETTA's alpha / r. Trained norm weights travel as
``modules_to_save`` (key ``base_model.model.<norm>.weight``), which PEFT restores exactly. Servers
such as vLLM and TGI accept only lora_A/lora_B tensors: ``include_norms=False`` leaves the norms
out, which is exact only if the run did not train them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapters.config import LorettaConfig
from ..adapters.peft_export import PEFT_CONFIG, PEFT_PREFIX, PEFT_WEIGHTS, peft_lora_config
from ..file_io import write_safetensors
from .updates import RepUpdate



def lora_tensors(updates: dict[str, RepUpdate], norms: dict[str, torch.Tensor],
                 dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """PEFT-named tensors; dtype None keeps the adapter's own dtype (that of its cores)."""
    tensors = {}
    for module, update in updates.items():
        out_dtype = dtype or update.a_cores[0].dtype
        lora_a, lora_b = update.lora_factors()
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = lora_a.to(out_dtype)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = lora_b.to(out_dtype)
    for name, tensor in norms.items():
        tensors[PEFT_PREFIX + name] = tensor.to(dtype or tensor.dtype).contiguous()
    return tensors


def write_lora(cfg: LorettaConfig, updates: dict[str, RepUpdate], norms: dict[str, torch.Tensor],
               base_name: str | None, dtype: torch.dtype | None, directory: Path) -> list[str]:
    """Write adapter_model.safetensors + adapter_config.json (megabytes; no streaming needed)."""
    write_safetensors(directory / PEFT_WEIGHTS, lora_tensors(updates, norms, dtype), metadata={"format": "pt"})
    (directory / PEFT_CONFIG).write_text(json.dumps(peft_lora_config(cfg, list(norms), base_name), indent=2) + "\n")
    return [PEFT_CONFIG, PEFT_WEIGHTS]
