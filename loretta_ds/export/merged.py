"""The merged export: base checkpoint + LoRETTA_rep updates -> a plain Hugging Face checkpoint.

Two phases. ``plan_merged`` decides everything from headers alone: which output shard holds each
tensor, its dtype, and whether it is copied, merged (W + (alpha/r)(A B)^T) or replaced (a trained
norm); every shape is checked here, before anything is written. ``write_merged`` then streams:
each output tensor is produced in row blocks of at most 1 MB in float32 (read rows of W, add the
same rows of the update, cast, append to the shard file), so memory stays at a few blocks plus
the adapter, whatever the size of the model or of its shards. Each merged block also tells
``UpdateRounding`` how much of the update survived the cast (rounding.py).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .base_weights import BaseCheckpoint, ShardReader, TensorInfo
from .safetensors_stream import StreamingSafetensorsWriter, dtype_name
from .rounding import UpdateRounding
from .updates import RepUpdate
from ..quantization import QuantSpec

# Rows per block are chosen so a block is at most this many bytes in float32, whatever the source
# dtype: the arithmetic (and so every output byte) is then the same for .bin and safetensors bases.
BLOCK_BYTES = 1024 * 1024
DEFAULT_MAX_SHARD_SIZE = "5GB"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files copied from the base directory next to the weights (tokenizer, generation defaults, and
# the license files that LLaMA-2's license asks to travel with derivatives). Other weight formats
# (consolidated.*.pth, *.msgpack, *.h5) are deliberately not copied: they would be stale.
COPIED_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.tiktoken|"
    r"spiece\.model|sentencepiece.*\.model|chat_template.*|generation_config\.json|"
    r"LICENSE.*|USE_POLICY\.md|NOTICE.*|Notice.*)$"
)


def parse_size(size: str | int) -> int:
    """'5GB' -> 5 * 10^9, '2GiB' -> 2 * 2^30, '500MB', '100KB', or a plain number of bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"max_shard_size {size!r} is not a size; write e.g. 5GB, 500MB or 2GiB")
    unit = (match[2] or "B").upper()
    factor = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
    return int(float(match[1]) * factor)


@dataclass
class PlannedTensor:
    """One output tensor: read ``source``, optionally add ``update`` or take ``replacement``;
    ``quantization``: the base trained 4-bit, so the weight is its dequantized 4-bit form."""

    source: TensorInfo
    dtype: torch.dtype
    update: RepUpdate | None = None
    replacement: torch.Tensor | None = None
    quantization: QuantSpec | None = None

    @property
    def nbytes(self) -> int:
        return self.source.numel * self.dtype.itemsize


@dataclass
class PlannedShard:
    filename: str
    tensors: list[PlannedTensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _check_against_base(base: BaseCheckpoint, updates: dict[str, RepUpdate],
                        norms: dict[str, torch.Tensor]) -> None:
    problems = []
    for update in updates.values():
        info = base.tensors.get(update.weight_name)
        expected = (update.out_features, update.in_features)
        if info is None:
            problems.append(f"{update.weight_name} is missing")
        elif info.shape != expected:
            problems.append(f"{update.weight_name} has shape {list(info.shape)}, the adapter expects {list(expected)}")
        elif not info.dtype.is_floating_point:
            problems.append(f"{update.weight_name} is {info.dtype} (quantized?), not a float weight")
    for name, tensor in norms.items():
        info = base.tensors.get(name)
        if info is None:
            problems.append(f"{name} (a trained norm) is missing")
        elif info.shape != tuple(tensor.shape):
            problems.append(f"{name} has shape {list(info.shape)}, the adapter's is {list(tensor.shape)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"the base checkpoint in {base.directory} does not fit the adapter: {shown}. "
                         "Pass --base with the model the adapter was trained on.")


def plan_merged(base: BaseCheckpoint, updates: dict[str, RepUpdate], norms: dict[str, torch.Tensor],
                dtype: torch.dtype | None, max_shard_size: int,
                quantized: tuple[QuantSpec, set[str]] | None = None) -> list[PlannedShard]:
    """Output shards in base order, greedily filled up to ``max_shard_size`` bytes each.

    dtype: the output dtype of floating tensors; None keeps each base tensor's own dtype.
    quantized: (how, the weight names) when the adapter trained on a 4-bit base: those weights
    are written as the 4-bit model saw them (quantized and dequantized again), update added.
    Every base tensor appears exactly once; a tensor larger than the limit gets a shard alone.
    """
    _check_against_base(base, updates, norms)
    spec, quantized_names = quantized if quantized is not None else (None, set())
    missing = sorted(quantized_names - set(base.tensors))
    if missing:
        raise ValueError(f"the base checkpoint in {base.directory} lacks weights the 4-bit model quantized "
                         f"({', '.join(missing[:3])}); pass --base with the model the adapter was trained on")
    by_weight = {u.weight_name: u for u in updates.values()}
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for name, info in base.tensors.items():
        out_dtype = dtype if (dtype is not None and info.dtype.is_floating_point) else info.dtype
        dtype_name(out_dtype)  # refuse unsupported dtypes now rather than mid-write
        planned = PlannedTensor(info, out_dtype, by_weight.get(name), norms.get(name),
                                spec if name in quantized_names else None)
        if groups[-1] and size + planned.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(planned)
        size += planned.nbytes
    if len(groups) == 1:
        return [PlannedShard(SINGLE_FILE, groups[0])]
    n = len(groups)
    return [PlannedShard(f"model-{i:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups, 1)]


def _row_blocks(rows: int, row_numel: int) -> list[tuple[int, int]]:
    per_block = max(1, BLOCK_BYTES // max(1, row_numel * 4))
    return [(start, min(start + per_block, rows)) for start in range(0, rows, per_block)]


def _merged_block(planned: PlannedTensor, block: torch.Tensor, start: int, stop: int, factors: tuple,
                  rounding: UpdateRounding | None) -> torch.Tensor:
    """Rows [start, stop) of W + s * lora_B @ lora_A, accumulated in float32 and rounded once;
    what the rounding kept of the update is added to ``rounding``."""
    lora_a, lora_b = factors
    base = block.to(torch.float32)
    merged = torch.addmm(base, lora_b[start:stop], lora_a, alpha=planned.update.scaling)
    written = merged.to(planned.dtype)
    if rounding is not None:
        rounding.add(planned.source.name, base, merged, written, block.dtype)
    return written


def _blocks(planned: PlannedTensor, reader: ShardReader, factors: tuple | None,
            rounding: UpdateRounding | None = None):
    """Yield the output tensor as (rows, row_numel) blocks in the output dtype."""
    info = planned.source
    if planned.replacement is not None:
        flat = planned.replacement.reshape(info.rows, info.row_numel)
        yield flat.to(planned.dtype)
        return
    if planned.quantization is not None:
        yield from _dequantized_blocks(planned, reader, factors, rounding)
        return
    for start, stop in _row_blocks(info.rows, info.row_numel):
        block = reader.read_rows(info, start, stop)
        yield block.to(planned.dtype) if factors is None else _merged_block(planned, block, start, stop,
                                                                             factors, rounding)


def _dequantized_blocks(planned: PlannedTensor, reader: ShardReader, factors: tuple | None,
                        rounding: UpdateRounding | None):
    """A weight of a 4-bit base, whole (double quantization scales its blocks with statistics of
    the whole tensor, so it cannot be quantized by row blocks): quantized as the loader did,
    dequantized, the update added in float32; written in row blocks. One weight at a time."""
    info = planned.source
    weight = planned.quantization.roundtrip(reader.read_rows(info, 0, info.rows)).reshape(info.rows, info.row_numel)
    for start, stop in _row_blocks(info.rows, info.row_numel):
        block = weight[start:stop]
        yield block.to(planned.dtype) if factors is None else _merged_block(planned, block, start, stop,
                                                                             factors, rounding)


def write_merged(plan: list[PlannedShard], base: BaseCheckpoint, directory: Path,
                 log: Callable[[str], None] = print, rounding: UpdateRounding | None = None) -> dict:
    """Write every planned shard into ``directory``, then the index; return the index dict.
    rounding: collects, per merged weight, how much of the update the output dtype kept."""
    weight_map: dict[str, str] = {}
    reader: ShardReader | None = None
    reader_file: Path | None = None
    try:
        for number, shard in enumerate(plan, 1):
            writer = StreamingSafetensorsWriter(
                directory / shard.filename,
                [(t.source.name, t.source.shape, t.dtype) for t in shard.tensors])
            try:
                for planned in shard.tensors:
                    if planned.replacement is None and reader_file != planned.source.file:
                        # Base order is file order, so each base shard is opened exactly once.
                        if reader is not None:
                            reader.close()
                        reader, reader_file = base.open_shard(planned.source.file), planned.source.file
                    factors = planned.update.lora_factors() if planned.update is not None else None
                    for block in _blocks(planned, reader, factors, rounding):
                        writer.write(planned.source.name, block)
                    weight_map[planned.source.name] = shard.filename
                writer.close()
            except BaseException:
                writer.abort()
                raise
            log(f"  [{number}/{len(plan)}] {shard.filename} ({shard.nbytes / 1e9:.2f} GB)")
    finally:
        if reader is not None:
            reader.close()
    index = {"metadata": {"total_size": sum(s.nbytes for s in plan),
                          "total_parameters": sum(t.source.numel for s in plan for t in s.tensors)},
             "weight_map": weight_map}
    if len(plan) > 1:
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def read_base_config(base_dir: Path) -> dict:
    """The base's config.json, refused when merging into it cannot give a plain checkpoint."""
    path = base_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{base_dir} has no config.json; pass --base with a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-download the base model") from None
    if "quantization_config" in config:
        raise ValueError(f"{base_dir} is a quantized checkpoint ({config['quantization_config'].get('quant_method', '?')}); "
                         "merging needs the full-precision base model the adapter was trained on (--base)")
    return config


def write_model_files(base_dir: Path, config: dict, dtype: torch.dtype | None, directory: Path) -> list[str]:
    """config.json (dtype updated when converting), then generation config, tokenizer, license files."""
    config = dict(config)
    if dtype is not None:
        dtype_text = str(dtype).removeprefix("torch.")
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
        for key in keys:  # transformers 5 writes "dtype", 4.x "torch_dtype": update what is there
            config[key] = dtype_text
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copied = ["config.json"]
    for path in sorted(base_dir.iterdir()):
        if path.is_file() and COPIED_FILES.match(path.name):
            shutil.copyfile(path, directory / path.name)  # copyfile follows HF-cache symlinks
            copied.append(path.name)
    return copied
