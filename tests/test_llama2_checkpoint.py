"""benchmarks.llama2_checkpoint without writing weights: the hub's layout of LLaMA-2-7B (config, shards)."""
import math

import pytest

from benchmarks.llama2_checkpoint import MAX_SHARD_BYTES, hub_config, plan_shards, tensor_shapes
from test_counts import TOTAL_BASE


@pytest.mark.slow  # the meta-device 7B model takes seconds to build
def test_7b_is_laid_out_in_the_hubs_two_shards():
    config = hub_config("llama2-7b", None, 32000)
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (4096, 11008, 32)
    shapes = tensor_shapes(config)
    assert len(shapes) == 2 + 32 * 9 + 1  # embedding, head, 9 tensors per layer, final norm
    shards = plan_shards(shapes)
    sizes = [sum(2 * math.prod(shape) for _, shape in shard) for shard in shards]
    # Llama-2-7b-hf: 9.98 GB + 3.50 GB; its files also hold 32 rotary inv_freq buffers (8 KiB), which
    # transformers no longer saves.
    assert len(shards) == 2 and round(sizes[0] / 1e9, 2) == 9.98 and round(sizes[1] / 1e9, 2) == 3.50
    assert all(size <= MAX_SHARD_BYTES for size in sizes)
    assert sum(sizes) == 2 * TOTAL_BASE["llama2-7b"]
    assert shards[0][0][0] == "model.embed_tokens.weight" and shards[-1][-1][0] == "lm_head.weight"


def test_70b_slice_keeps_the_widths_of_a_decoder_layer():
    shapes = dict(tensor_shapes(hub_config("llama2-70b", 1, 1024)))
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (8192, 8192)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (1024, 8192)  # 8 KV heads of 128
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (8192, 28672)
    assert shapes["lm_head.weight"] == (1024, 8192) and "model.layers.1.mlp.up_proj.weight" not in shapes
