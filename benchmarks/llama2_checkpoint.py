"""Write a LLaMA-2-shaped checkpoint laid out as the hub's meta-llama/Llama-2-*-hf repositories, with
random weights from a fixed seed, one tensor at a time (the whole model is never in memory).

    python -m benchmarks.llama2_checkpoint llama2-7b /work/ckpt7b
    python -m benchmarks.llama2_checkpoint llama2-70b OUT --layers 1          # a width-exact slice
    python -m benchmarks.llama2_checkpoint llama2-13b OUT --layers 1 --vocab_size 1024

The directory holds what the hub's Llama-2-7b-hf holds: config.json (its keys and values, with the
preset's shapes), generation_config.json, bf16 shards model-0000k-of-0000n.safetensors of at most
10 GB each (two for 7B, 9.98 GB + 3.50 GB as on the hub) with model.safetensors.index.json, and a
SentencePiece tokenizer (tokenizer.model, tokenizer.json, tokenizer_config.json) with LLaMA-2's
conventions: <unk> <s> </s> at ids 0-2, no pad, byte fallback, digits split.

Why it exists: training, loading and export at 7B-70B shapes fail on memory, not on maths, and no
model hub is reachable here. Slices keep the widths of a decoder layer exactly (hidden size, heads,
KV heads, MLP size) with 1-2 layers; a smaller vocabulary (--vocab_size) changes only the embedding
and the head, which no adapter touches.

Memory: each tensor is drawn and written in row blocks of at most BLOCK_ELEMENTS values, so the
writer's peak is the interpreter + one block, whatever the model size (measured figures in
docs/benchmarks.md). The tokenizer is trained on the bundled corpus plus seeded filler words: the
corpus alone has too few distinct words for 32000 BPE pieces.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from loretta_ds.models import LLAMA2_PRESETS, llama2_config, meta_model
from loretta_ds.tiny_llama import corpus_documents, hf_tokenizer_from_sentencepiece, train_sentencepiece

# The hub's Llama-2-*-hf shards at 10 GB (decimal), which splits 7B into 9.98 GB + 3.50 GB.
MAX_SHARD_BYTES = 10_000_000_000
INITIALIZER_RANGE = 0.02
BLOCK_ELEMENTS = 1 << 24  # 64 MiB of float32 drawn at a time
SEED = 0
FILLER_WORDS = 60_000  # enough distinct words for 32000 BPE pieces (the corpus alone has ~800)


def hub_config(preset: str, layers: int | None, vocab_size: int) -> dict:
    """config.json as the hub's Llama-2-7b-hf writes it, with the preset's shapes (torch_dtype bfloat16:
    the shards written here are bf16)."""
    shape = llama2_config(preset, vocab_size=vocab_size, **({} if layers is None else {"num_hidden_layers": layers}))
    return {
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": shape.hidden_size, "initializer_range": INITIALIZER_RANGE,
        "intermediate_size": shape.intermediate_size, "max_position_embeddings": shape.max_position_embeddings,
        "model_type": "llama", "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers, "num_key_value_heads": shape.num_key_value_heads,
        "pretraining_tp": 1, "rms_norm_eps": shape.rms_norm_eps, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.31.0.dev0",
        "use_cache": True, "vocab_size": vocab_size,
    }


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor the checkpoint holds, in the model's order (embedding, layer 0..n-1,
    final norm, head): exactly the persistent state of transformers' LlamaForCausalLM for this config."""
    from transformers import AutoConfig

    model = meta_model(AutoConfig.for_model(**config))
    return [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], max_bytes: int = MAX_SHARD_BYTES) -> list[list]:
    """Tensors in order, a new shard when the next one would pass max_bytes (as save_pretrained shards)."""
    shards, size = [[]], 0
    for name, shape in shapes:
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _header(tensors: list) -> bytes:
    """The safetensors header (8-byte length + JSON, padded with spaces to 8 bytes) of bf16 tensors."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        end = offset + 2 * _numel(shape)
        entries[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _write_tensor(handle, name: str, shape: tuple, generator: torch.Generator) -> None:
    """Norm weights are ones (as initialised); every other weight N(0, initializer_range), in row blocks."""
    if name.endswith("norm.weight"):
        handle.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())
        return
    columns = shape[-1]
    rows = _numel(shape) // columns
    step = max(1, BLOCK_ELEMENTS // columns)
    for start in range(0, rows, step):
        block = torch.randn(min(step, rows - start), columns, generator=generator) * INITIALIZER_RANGE
        handle.write(memoryview(block.to(torch.bfloat16).view(torch.uint8).numpy()))
        del block


def write_shards(out: Path, shapes: list, seed: int, log=print) -> dict:
    """Write the shards and the index; returns the index."""
    shards = plan_shards(shapes)
    count = len(shards)
    weight_map, total = {}, 0
    generator = torch.Generator().manual_seed(seed)
    for number, tensors in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{count:05d}.safetensors"
        started = time.perf_counter()
        with open(out / file_name, "wb") as handle:
            handle.write(_header(tensors))
            for name, shape in tensors:
                _write_tensor(handle, name, shape, generator)
                weight_map[name] = file_name
                total += 2 * _numel(shape)
        log(f"wrote {file_name}: {len(tensors)} tensors, {(out / file_name).stat().st_size / 1e9:.2f} GB "
            f"in {time.perf_counter() - started:.0f} s")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def write_tokenizer(out: Path, vocab_size: int, seed: int) -> None:
    """A SentencePiece BPE tokenizer of exactly vocab_size pieces with LLaMA-2's conventions, and its
    transformers files."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    frequency = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    words = ["".join(rng.choices(letters, frequency, k=rng.randint(2, 9))) for _ in range(FILLER_WORDS)]
    filler = [" ".join(words[i:i + 200]) for i in range(0, len(words), 200)]
    proto = train_sentencepiece(corpus_documents() + filler, vocab_size=vocab_size, pad=False)
    (out / "tokenizer.model").write_bytes(proto)
    tokenizer = hf_tokenizer_from_sentencepiece(proto, model_max_length=4096, pad_token=None)
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} tokens, not {vocab_size}")
    tokenizer.save_pretrained(out)


def write_checkpoint(preset: str, out_dir: str | os.PathLike, layers: int | None = None, vocab_size: int = 32000,
                     seed: int = SEED, log=print) -> Path:
    """Write the checkpoint into out_dir (which must not exist or be empty), staged beside it and renamed
    into place when complete, so an interrupted run leaves no half-written model."""
    if preset not in LLAMA2_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(LLAMA2_PRESETS)}")
    if layers is not None and layers < 1:
        raise ValueError(f"--layers must be at least 1, got {layers}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pass a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = hub_config(preset, layers, vocab_size)
    shapes = tensor_shapes(config)
    need = sum(2 * _numel(shape) for _, shape in shapes)
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise OSError(f"{out.parent} has {free / 1e9:.1f} GB free; the checkpoint needs {need / 1e9:.1f} GB")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True, "temperature": 0.6,
             "top_p": 0.9, "max_length": 4096, "transformers_version": "4.31.0.dev0"}, indent=2) + "\n")
        write_tokenizer(staging, vocab_size, seed)
        write_shards(staging, shapes, seed, log)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it owner-only
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=list(LLAMA2_PRESETS))
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers (default: the preset's, 32 / 40 / 80); 1-2 make a width-exact slice")
    parser.add_argument("--vocab_size", type=int, default=32000,
                        help="tokenizer and embedding size (default 32000, LLaMA-2's)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(1)
    out = write_checkpoint(args.preset, args.out_dir, args.layers, args.vocab_size, args.seed,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"out_dir": str(out), "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mib": round(peak_mib)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
