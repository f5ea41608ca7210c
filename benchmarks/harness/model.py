"""The benchmark's base: a LLaMA-architecture causal LM with random weights, built in code."""
from __future__ import annotations

import torch
from torch import nn

from .config import BenchConfig

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_base(cfg: BenchConfig, attn: str, device: torch.device) -> nn.Module:
    """Random-weight LlamaForCausalLM of ``cfg``'s shape in ``cfg.dtype`` on ``device``, frozen.

    No download: the weights are random, which is all a speed and memory benchmark needs.
    Raises ValueError/ImportError when ``attn`` cannot be used here (e.g. flash-attn missing).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.kv_heads or cfg.heads, vocab_size=cfg.vocab,
                         max_position_embeddings=max(4096, cfg.seq_len), rms_norm_eps=1e-5,
                         tie_word_embeddings=False, attn_implementation=attn)
    torch.manual_seed(cfg.seed)
    dtype = TORCH_DTYPES[cfg.dtype]
    # Build on the target device in the target dtype: a 7B-shaped block never visits the host.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    return model
