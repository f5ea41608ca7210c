"""Read safetensors headers and tensor rows, and write safetensors files one block at a time.

File layout (the public safetensors format): an 8-byte little-endian header length N, N bytes of
JSON header ({name: {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {...}}),
then the tensors' bytes back to back. ``data_offsets`` count from the end of the header.

The library's ``save_file`` needs every tensor of a file in memory at once (plus a serialized
copy). Because the export knows every output tensor's shape and dtype before it starts, it writes
the header first and then streams each tensor in row blocks, so a shard never exists in memory.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch

# The format's dtype names. Only these exist in LLaMA checkpoints and their adapters; anything
# else is refused with a clear message rather than written wrongly.
DTYPE_TO_NAME = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
NAME_TO_DTYPE = {name: dtype for dtype, name in DTYPE_TO_NAME.items()}

# The reference implementation refuses headers above 100 MB; so do we (a corrupt length field
# would otherwise make us allocate gigabytes).
MAX_HEADER_BYTES = 100_000_000
# Data starts at an 8-byte boundary so that readers may map tensors with aligned addresses.
HEADER_ALIGNMENT = 8

if sys.byteorder != "little":  # the format is little-endian; tensors are written as raw memory
    raise ImportError("loretta_ds.export writes safetensors as raw memory and needs a little-endian CPU")


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_TO_NAME[dtype]
    except KeyError:
        raise ValueError(f"tensors of dtype {dtype} cannot be exported (supported: "
                         f"{', '.join(str(d) for d in DTYPE_TO_NAME)})") from None


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """({name: {"dtype": torch.dtype, "shape": tuple, "begin": abs byte offset, "nbytes"}}, size).

    Reads only the header (kilobytes), never tensor data. Raises ValueError on a corrupt file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file; re-download it")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{path} has a corrupt safetensors header (length {header_len}); re-download it")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} has a corrupt safetensors header ({err}); re-download it") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header (a JSON {type(header).__name__}, not an "
                         "object of tensors); re-download it")
    data_start = 8 + header_len
    tensors: dict[str, dict] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(entry)
        if problem:
            raise ValueError(f"{path} has a corrupt safetensors header: tensor {name} {problem}; re-download it")
        if entry["dtype"] not in NAME_TO_DTYPE:
            raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']!r}, which the "
                             f"export does not handle (supported: {', '.join(NAME_TO_DTYPE)})")
        begin, end = entry["data_offsets"]
        if data_start + end > size:
            raise ValueError(f"{path} is truncated (tensor {name} ends past the end of the file); "
                             "re-download it")
        tensors[name] = {"dtype": NAME_TO_DTYPE[entry["dtype"]], "shape": tuple(entry["shape"]),
                         "begin": data_start + begin, "nbytes": end - begin}
    return tensors, size


def _entry_problem(entry) -> str | None:
    """What is wrong with one tensor's header entry, or None: {"dtype": str, "shape": [int, ...],
    "data_offsets": [begin, end]} with 0 <= begin <= end."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            return f"has no {key!r}"
    offsets, shape = entry["data_offsets"], entry["shape"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return f"has data_offsets {offsets!r}, not [begin, end]"
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        return f"has shape {shape!r}, not a list of sizes"
    if not isinstance(entry["dtype"], str):
        return f"has dtype {entry['dtype']!r}, not a name"
    return None


def read_exact(f, begin: int, nbytes: int) -> torch.Tensor:
    """``nbytes`` bytes at absolute offset ``begin`` of an open binary file, as a uint8 tensor.

    Plain reads into a fresh buffer instead of mmap: mapped file pages would count towards the
    process's resident memory for as long as the mapping lives, reads do not.
    """
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    f.seek(begin)
    done = 0
    while done < nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"{f.name} ended early (wanted {nbytes} bytes at {begin}); re-download it")
        done += got
    return buffer


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous tensor (any dtype, including bfloat16 and bool)."""
    flat = tensor.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class StreamingSafetensorsWriter:
    """Writes one safetensors file whose tensor list is known up front, data block by block.

    entries: [(name, shape, dtype)] in file order. Call ``write(name, block)`` with each tensor's
    row blocks in order (a block is any contiguous slice of the row-major data); ``close()``
    checks that every byte announced in the header was written, then flushes and fsyncs.
    """

    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
        self._expected: list[tuple[str, int]] = []
        offset = 0
        for name, shape, dtype in entries:
            numel = 1
            for dim in shape:
                numel *= int(dim)
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": dtype_name(dtype), "shape": [int(d) for d in shape],
                            "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes))
            offset += nbytes
        self.data_bytes = offset
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)  # spaces are valid JSON padding
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)
        self._index = 0          # position in self._expected
        self._written = 0        # bytes written of the current tensor

    def write(self, name: str, block: torch.Tensor) -> None:
        data = tensor_bytes(block)
        if data.nbytes == 0:
            return
        while self._index < len(self._expected) and self._expected[self._index][1] == 0:
            self._index += 1     # empty tensors own no bytes
        if self._index >= len(self._expected) or self._expected[self._index][0] != name:
            expected = self._expected[self._index][0] if self._index < len(self._expected) else "nothing"
            raise RuntimeError(f"{self.path.name}: got data for {name} while expecting {expected}")
        total = self._expected[self._index][1]
        if self._written + data.nbytes > total:
            raise RuntimeError(f"{self.path.name}: {name} got more than its {total} bytes")
        self._file.write(data)
        self._written += data.nbytes
        if self._written == total:
            self._index, self._written = self._index + 1, 0

    def close(self) -> None:
        remaining = [name for name, nbytes in self._expected[self._index:] if nbytes]
        if remaining or self._written:
            self._file.close()
            raise RuntimeError(f"{self.path.name}: tensors not fully written: {remaining[:3]}")
        self._file.flush()
        os.fsync(self._file.fileno())  # the publishing rename must never expose unwritten data
        self._file.close()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
