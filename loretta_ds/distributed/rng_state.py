"""A process's random number generators as tensors + JSON: saved in one safetensors file, which
cannot run code when read (unlike a pickle of ``random.getstate()``).

Four generators decide what a resumed run draws (dropout masks, data order helpers): Python's
``random`` (Mersenne Twister: 624 words + an index, and a cached Gaussian), numpy's global one
(the same generator, its own cache), torch's CPU generator and each CUDA device's (opaque byte
tensors). Restoring them makes the resumed run draw exactly what the uninterrupted one drew.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

_META_KEY = "rng"


def capture() -> bytes:
    """This process's RNG states, serialized as a safetensors file."""
    version, words, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {
        "python": torch.tensor(words, dtype=torch.int64),  # 624 uint32 words + the index (<= 624)
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{index}"] = state
    # repr-exact floats: json writes the shortest text that reads back as the same double.
    meta = {"python": {"version": version, "gauss_next": gauss_next},
            "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    return safetensors_bytes(tensors, metadata={_META_KEY: json.dumps(meta)})


def _read(file: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[_META_KEY])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        python, numpy = meta["python"], meta["numpy"]
        if not (tensors["python"].numel() == 625 and tensors["numpy"].numel() == 624
                and isinstance(python, dict) and isinstance(numpy, dict)):
            raise ValueError("unexpected sizes")
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{file} is not an RNG state written by this trainer ({err}); the checkpoint is "
                         "damaged: resume from another one, or start over with --overwrite_output_dir") from None
    return tensors, meta


def check(file: Path) -> None:
    """Raise ValueError (naming the file) unless ``file`` reads as an RNG state."""
    _read(file)


def restore(file: Path) -> None:
    """Set this process's generators to the states saved in ``file``."""
    tensors, meta = _read(file)
    python, numpy = meta["python"], meta["numpy"]
    random.setstate((int(python["version"]), tuple(int(v) for v in tensors["python"].tolist()),
                     python["gauss_next"]))
    np.random.set_state((numpy["kind"], tensors["numpy"].numpy().astype(np.uint32), int(numpy["pos"]),
                         int(numpy["has_gauss"]), float(numpy["cached_gaussian"])))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"cuda/{index}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda/{index}"], index)
