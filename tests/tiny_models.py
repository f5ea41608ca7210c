"""Tiny LLaMA models built in code for tests (never downloaded weights)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(hidden: int = 64, layers: int = 2, intermediate: int = 172, heads: int = 4,
                      kv_heads: int | None = None, vocab: int = 128) -> LlamaConfig:
    # 172 = 4 * 43: an MLP width with the awkward prime factor of LLaMA-2-7B's 11008 = 2^8 * 43.
    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                       vocab_size=vocab, max_position_embeddings=128, tie_word_embeddings=False)


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**kwargs)).to(dtype).eval()


def randomize_adapter(model: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Give every adapter tensor non-zero values, so adapted != base and tests cannot pass by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "loretta_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
