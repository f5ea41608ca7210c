"""The base model's checkpoint on disk: which tensors exist (from headers) and row-block reads.

Handles what Hugging Face model directories contain: ``model.safetensors.index.json`` + shards,
a single ``model.safetensors``, and the legacy ``pytorch_model.bin.index.json`` + ``.bin`` shards
or a single ``pytorch_model.bin``. Nothing here holds more than one shard's worth of data, and
safetensors shards are read with plain reads, one row block at a time.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .safetensors_stream import read_exact, read_header

# In transformers' order of preference, so we read the same weights that from_pretrained would.
CHECKPOINT_LAYOUTS = (
    ("model.safetensors.index.json", "safetensors"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "bin"),
    ("pytorch_model.bin", "bin"),
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the base checkpoint: where it is, its shape and dtype; no data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    begin: int | None = None  # absolute byte offset in a safetensors file; None in a .bin

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def rows(self) -> int:
        """Leading dimension: tensors are streamed as (rows, row_numel); a scalar is 1 row."""
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        return self.numel // self.rows if self.rows else 0


@dataclass
class BaseCheckpoint:
    """Every tensor of a base checkpoint, in file order then storage order."""

    directory: Path
    kind: str                       # "safetensors" or "bin"
    files: list[Path]
    tensors: dict[str, TensorInfo]

    def open_shard(self, path: Path) -> "ShardReader":
        return SafetensorsShard(path) if self.kind == "safetensors" else BinShard(path)


def find_checkpoint(directory: Path) -> tuple[str, Path]:
    """(kind, path of the index or single weights file) of a model directory."""
    for name, kind in CHECKPOINT_LAYOUTS:
        if (directory / name).is_file():
            return kind, directory / name
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
        f"no model weights in {directory}: expected one of "
        f"{', '.join(name for name, _ in CHECKPOINT_LAYOUTS)} (found: {', '.join(present[:12]) or 'nothing'}). "
        "Pass a Hugging Face model directory with its weights (for an export: --base, the model the "
        "adapter was trained on)."
    )


def _shard_files(kind: str, path: Path) -> tuple[list[Path], set[str] | None]:
    """Shard files in order, and the tensor names the index lists (None without an index)."""
    if not path.name.endswith(".index.json"):
        return [path], None
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid checkpoint index ({err!r}); re-download the base model") from None
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (path.parent / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path.name} lists shards that are missing from {path.parent}: "
                                f"{', '.join(missing[:5])}; finish downloading the base model")
    return [path.parent / f for f in files], set(weight_map)


def _load_bin(path: Path) -> dict:
    """A .bin state dict, memory-mapped when its format allows (torch >= 1.6 zip files).

    weights_only=True: a checkpoint is data, and unpickling arbitrary objects would run code.
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Pre-1.6 pickles cannot be mapped: they are read whole (still one shard at a time).
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint of tensors ({_first_sentence(err)}): "
            "a pickle holding anything else is never loaded, as loading it could run code. Use the model's "
            "safetensors weights (model.safetensors), or, only if you trust the file, convert it: python -c "
            f"\"import torch; from safetensors.torch import save_file; s = torch.load('{path.name}', "
            "weights_only=False); save_file({k: v.contiguous() for k, v in s.items() if torch.is_tensor(v)}, "
            f"'model.safetensors')\" in the model directory, then remove {path.name}") from None


def _first_sentence(err: BaseException) -> str:
    """The reason of a torch.load error without its terminal colours and advice (which names
    weights_only=False, the one thing never done here)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return (text.split(". ")[0].splitlines() or [""])[0][:160]


def open_base_checkpoint(directory: str | os.PathLike) -> BaseCheckpoint:
    """Index every tensor of the checkpoint in ``directory`` from headers alone.

    safetensors: reads each shard's JSON header (kilobytes). .bin: maps each shard in turn to
    read its tensor metadata (unpickling touches no tensor data when mmap is possible).
    """
    directory = Path(directory)
    kind, path = find_checkpoint(directory)
    files, listed = _shard_files(kind, path)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        if kind == "safetensors":
            header, _ = read_header(file)
            found = {name: TensorInfo(name, e["shape"], e["dtype"], file, e["begin"])
                     for name, e in sorted(header.items(), key=lambda item: item[1]["begin"])}
        else:
            state = _load_bin(file)
            found = {name: TensorInfo(name, tuple(t.shape), t.dtype, file)
                     for name, t in state.items() if isinstance(t, torch.Tensor)}
            del state
        for name, info in found.items():
            # With an index, a shard's unlisted tensors are invisible to from_pretrained: skip them.
            if listed is not None and name not in listed:
                continue
            if name in tensors:
                raise ValueError(f"tensor {name} appears in both {tensors[name].file.name} and {file.name}; "
                                 "the base checkpoint is inconsistent, re-download it")
            tensors[name] = info
    if listed is not None:
        absent = sorted(listed - set(tensors))
        if absent:
            raise ValueError(f"{path.name} lists tensors that its shards do not contain "
                             f"({', '.join(absent[:5])}); re-download the base model")
    return BaseCheckpoint(directory, kind, files, tensors)


class ShardReader:
    """An open base shard: ``read_rows(info, start, stop)`` -> (stop - start, row_numel) tensor."""

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class SafetensorsShard(ShardReader):
    def __init__(self, path: Path):
        self._file = open(path, "rb")

    def close(self) -> None:
        self._file.close()

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        row_bytes = info.row_numel * info.dtype.itemsize
        raw = read_exact(self._file, info.begin + start * row_bytes, (stop - start) * row_bytes)
        return raw.view(info.dtype).reshape(stop - start, info.row_numel)


class BinShard(ShardReader):
    """A .bin shard, mapped once; the tensor being streamed is kept as a contiguous 2-D view."""

    def __init__(self, path: Path):
        self._state = _load_bin(path)
        self._current: tuple[str, torch.Tensor] | None = None

    def close(self) -> None:
        self._state, self._current = {}, None  # drop the mapping with the last reference

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        if self._current is None or self._current[0] != info.name:
            tensor = self._state[info.name]
            self._current = (info.name, tensor.contiguous().reshape(info.rows, info.row_numel))
        return self._current[1][start:stop]
