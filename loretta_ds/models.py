"""Model configs by name: LLaMA-2 presets with their real shapes, HF config files, meta-device models."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig

_LLAMA2_COMMON = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      hidden_act="silu", tie_word_embeddings=False)
# Shapes of the released LLaMA-2 checkpoints (70B uses grouped-query attention with 8 KV heads).
LLAMA2_PRESETS = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8),
}


def load_model_config(name_or_path: str) -> PretrainedConfig:
    """A preset name (llama2-7b/13b/70b), an HF config.json, or a model directory holding one."""
    if name_or_path in LLAMA2_PRESETS:
        return LlamaConfig(**_LLAMA2_COMMON, **LLAMA2_PRESETS[name_or_path])
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a preset ({', '.join(LLAMA2_PRESETS)}) nor a config "
            f"file or model directory with config.json; pass one of those"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); pass a Hugging Face config.json") from None
    if "model_type" not in data:
        raise ValueError(f"{path} has no 'model_type'; it is not a Hugging Face model config")
    return AutoConfig.for_model(**data)


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The causal-LM model of ``config`` on the meta device: real shapes, no memory, seconds for 70B."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
