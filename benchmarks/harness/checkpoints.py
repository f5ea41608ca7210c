"""Checkpoint files at the real LLaMA-2 shapes, without the weights.

Each method is applied to a meta-device model (no memory); only its trainable tensors are then
materialized (zeros, in the run's dtype) and saved with safetensors, and the file is measured.
The size depends only on the tensors' shapes, names and dtype, so this is the exact file a real
run of that model would write, safetensors header included.
"""
from __future__ import annotations

import os
import tempfile

import torch
from safetensors.torch import save_file
from torch import nn

from .baselines import add_dense_adapters

METHODS = ("rep", "adp", "lora", "adapter")


def _apply(method: str, model: nn.Module) -> nn.Module:
    if method in ("rep", "adp"):
        from loretta_ds.adapters import LorettaConfig, inject
        return inject(model, LorettaConfig(method=method))
    if method == "adapter":
        return add_dense_adapters(model, bottleneck=64)
    from .baselines import add_plain_lora
    # The same tensors PEFT saves for LoRA r=8 on q_proj,v_proj (lora_A and lora_B per module).
    return add_plain_lora(model, r=8, alpha=16, targets=("q_proj", "v_proj"))


def trainable_file_bytes(model_name: str, method: str, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(trainable parameters, safetensors file bytes) of ``method`` on preset or config ``model_name``."""
    from loretta_ds.models import load_model_config, meta_model

    model = _apply(method, meta_model(load_model_config(model_name)))
    tensors = {name: torch.zeros(p.shape, dtype=dtype) for name, p in model.named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trainable.safetensors")
        save_file(tensors, path)
        return sum(t.numel() for t in tensors.values()), os.path.getsize(path)


def checkpoint_rows(models: tuple[str, ...] = ("llama2-7b", "llama2-13b", "llama2-70b")) -> list[dict]:
    rows = []
    for model_name in models:
        sizes = {m: trainable_file_bytes(model_name, m) for m in METHODS}
        for method, (params, size) in sizes.items():
            rows.append({"model": model_name, "method": method, "trainable_params": params,
                         "checkpoint_bytes": size, "lora_over_this": sizes["lora"][1] / size})
    return rows


def checkpoint_table(rows: list[dict]) -> str:
    """Markdown: trainable parameters and bf16 checkpoint bytes per model and method."""
    lines = ["| model | method | trainable params | checkpoint (bf16 safetensors) | LoRA ckpt / this |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        size = r["checkpoint_bytes"]
        lines.append(f"| {r['model']} | {r['method']} | {r['trainable_params']:,} | {size:,} B "
                     f"({size / 2**20:.2f} MiB) | {r['lora_over_this']:.2f}x |")
    return "\n".join(lines) + "\n"
