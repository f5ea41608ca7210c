"""Check that the frozen base weights in memory equal the base checkpoint on disk, bit for bit.

Run at the end of training with ``--verify_frozen``: each frozen parameter is gathered (under
ZeRO-3, one tensor at a time, so memory stays at one weight) and compared with the tensor of the
same name in the model directory's safetensors files (cast to the training dtype, as loading
did). It proves that loading partitioned the right weights and that training never wrote them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapters.peft_export import PEFT_PREFIX
from .zero3_params import gathered, is_zero3_param

# Names the adapters add around a base parameter: LoRETTA and PEFT keep the original layer as
# `base_layer`; PEFT also wraps the whole model in `base_model.model.`.
_WRAPPER_PARTS = (".base_layer", )


def checkpoint_name(param_name: str) -> str:
    """The base checkpoint's name of an (adapted) model's parameter."""
    name = param_name.removeprefix(PEFT_PREFIX)
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as handle:
            return {name: single for name in handle.keys()}
    raise FileNotFoundError(f"{model_dir} has no safetensors checkpoint to compare the frozen weights with")


def verify_frozen(model: torch.nn.Module, model_dir: str | Path) -> dict:
    """Compare every frozen parameter with the checkpoint (a collective under ZeRO-3).

    Returns {"checked": n, "mismatched": [names], "missing": [names]}; tied or buffer-only
    weights that the checkpoint does not hold are listed as missing, not as failures.
    """
    from safetensors import safe_open

    files = _tensor_files(Path(model_dir))
    result = {"checked": 0, "mismatched": [], "missing": []}
    handles: dict[Path, object] = {}
    try:
        for name, param in model.named_parameters():
            if param.requires_grad:
                continue
            key = checkpoint_name(name)
            with gathered([param], is_zero3_param(param)):
                if key not in files:
                    result["missing"].append(name)
                    continue
                file = files[key]
                if file not in handles:
                    handles[file] = safe_open(str(file), framework="pt")
                expected = handles[file].get_tensor(key).to(param.dtype)
                actual = param.detach().cpu()
                if expected.shape != actual.shape or not torch.equal(expected, actual):
                    result["mismatched"].append(name)
                result["checked"] += 1
    finally:
        handles.clear()
    return result
