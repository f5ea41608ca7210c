"""save_adapter / load_adapter: only the trainable tensors, plus what is needed to check a match.

Directory layout: ``adapter_config.json`` ({"loretta": LorettaConfig, "base": model facts,
"target_shapes": {module: [out, in]}}) and ``adapter.safetensors`` (trainable tensors, named as in
the adapted model's ``named_parameters()``: ``<module>.loretta_A.tt_cores`` holds A's cores back
to back, see loretta_ds.tt.TTFactorMatrix).

The same directory is a PEFT adapter: ``adapter_config.json`` starts with PEFT's header
(``peft_type`` LORETTA_REP / LORETTA_ADP) and ``adapter_model.safetensors`` holds the same tensors
under PEFT's names (``base_model.model.<name>``), so ``peft.PeftModel.from_pretrained`` loads it
once loretta_ds has registered the method (loretta_ds.integrations.peft). Conversely, a directory
written by ``PeftModel.save_pretrained`` for a LoRETTA adapter (only PEFT's files) is read here.

Format 1 stored one tensor per core (``<module>.loretta_A.cores.<k>``); ``read_adapter_tensors``
still reads such files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..file_io import read_json_object, read_safetensors, replace_atomically, write_safetensors
from .config import LorettaConfig
from .injection import adapter_layers, inject, linear_shape, plan_injection, trainable_parameter_names
from .peft_export import PEFT_PREFIX, PEFT_WEIGHTS

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
# The file transformers reads a tokenizer's chat template from; a chat run writes the template its
# data was rendered with into adapter/ under this name, and the merged export carries it.
CHAT_TEMPLATE_NAME = "chat_template.jinja"
# PEFT dispatches on the config's ``peft_type`` string; these are LoRETTA's (not members of PEFT's
# PeftType enum, which only PEFT itself can extend). loretta_ds.integrations.peft registers them.
PEFT_TYPES = {"rep": "LORETTA_REP", "adp": "LORETTA_ADP"}
METHOD_OF_PEFT_TYPE = {peft_type: method for method, peft_type in PEFT_TYPES.items()}
FORMAT_VERSION = 2  # 2: one tensor per TT matrix (tt_cores); 1: one per core
_PER_CORE_KEY = re.compile(r"^(?P<matrix>.+\.loretta_[A-Za-z]+)\.cores\.(?P<index>\d+)$")


def peft_header(method: str, base_model_name_or_path: str | None) -> dict:
    """The keys a PEFT reader needs at the top of a LoRETTA ``adapter_config.json``."""
    return {"peft_type": PEFT_TYPES[method], "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of an adapted model, detached, contiguous, on CPU.

    Under ZeRO-3 they must be whole on this rank (persistent, or inside GatheredParameters).
    """
    params = dict(model.named_parameters())
    state = {}
    for name in trainable_parameter_names(model):
        tensor = params[name].detach()
        if hasattr(params[name], "ds_shape") and tuple(tensor.shape) != tuple(params[name].ds_shape):
            raise ValueError(f"{name} is partitioned by ZeRO-3; gather it before saving the adapter")
        state[name] = tensor.to("cpu").contiguous()
    return state


def _base_facts(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "_name_or_path")
    return {k: getattr(config, k) for k in keys if config is not None and hasattr(config, k)}


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` and ``adapter.safetensors`` (trainable tensors only).

    Each file is replaced atomically, so a crash never leaves a half-written file under its name.
    """
    cfg: LorettaConfig = model.loretta_config if hasattr(model, "loretta_config") else None
    if cfg is None:
        raise ValueError("this model has no LoRETTA adapter to save; call inject(model, cfg) first")
    state = adapter_state_dict(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = _base_facts(model)
    meta = {
        **peft_header(cfg.method, base.get("_name_or_path") or None),
        "format_version": FORMAT_VERSION,
        "loretta": cfg.to_dict(),
        "base": base,
        "target_shapes": {name: list(linear_shape(layer.base_layer))
                          for name, layer in adapter_layers(model).items()},
    }
    replace_atomically(directory / WEIGHTS_NAME, lambda tmp: write_safetensors(tmp, state, metadata={"format": "pt"}))
    # PEFT reads only its own file name and key names: the same tensors again (a LoRETTA adapter is small).
    peft_state = {PEFT_PREFIX + name: tensor for name, tensor in state.items()}
    replace_atomically(directory / PEFT_WEIGHTS,
                       lambda tmp: write_safetensors(tmp, peft_state, metadata={"format": "pt"}))
    replace_atomically(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return directory


def read_adapter_config(directory: str | os.PathLike) -> tuple[LorettaConfig, dict]:
    """(LorettaConfig, full metadata) of a saved adapter, with clear errors for missing/bad files."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file() or _weights_file(directory) is None:
        raise FileNotFoundError(
            f"{directory} is not a LoRETTA adapter: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(written by save_adapter or a training run's OUTPUT_DIR/adapter) or {PEFT_WEIGHTS} "
            "(written by PeftModel.save_pretrained)"
        )
    meta = read_json_object(path, "adapter config", "save the adapter again")
    if "loretta" not in meta and meta.get("peft_type") in METHOD_OF_PEFT_TYPE:
        return _config_of_peft_file(meta), meta
    if "loretta" not in meta:
        found = f"a PEFT {meta['peft_type']} adapter" if "peft_type" in meta else "not written by save_adapter"
        raise ValueError(f"{path} has no 'loretta' section ({found}); it is not a LoRETTA adapter")
    return LorettaConfig.from_dict(meta["loretta"]), meta


def _config_of_peft_file(meta: dict) -> LorettaConfig:
    """The LorettaConfig of an adapter_config.json written by PEFT (flat fields, PEFT's among them);
    ``meta`` gains the ``base`` facts save_adapter would have written."""
    fields = {f.name for f in dataclasses.fields(LorettaConfig)}
    cfg = LorettaConfig.from_dict({key: value for key, value in meta.items() if key in fields})
    if cfg.method != METHOD_OF_PEFT_TYPE[meta["peft_type"]]:
        raise ValueError(f"adapter config says peft_type {meta['peft_type']} but method {cfg.method!r}; re-save it")
    meta.setdefault("base", {"_name_or_path": meta.get("base_model_name_or_path")})
    return cfg


def _weights_file(directory: Path) -> Path | None:
    """save_adapter's tensor file, else PEFT's (the only one PeftModel.save_pretrained writes)."""
    for name in (WEIGHTS_NAME, PEFT_WEIGHTS):
        if (directory / name).is_file():
            return directory / name
    return None


def read_adapter_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter.safetensors``, named as today's layers name their parameters.

    A format-1 file's per-core tensors (``<matrix>.cores.<k>``) are joined, in core order, into
    the one flat ``<matrix>.tt_cores`` each TT matrix has now (the same values, the same layout).
    """
    weights = _weights_file(Path(directory))
    if weights is None:
        raise FileNotFoundError(f"{directory} has neither {WEIGHTS_NAME} nor {PEFT_WEIGHTS}")
    stored = read_safetensors(weights, what="adapter")
    if weights.name == PEFT_WEIGHTS:
        stored = {key.removeprefix(PEFT_PREFIX): tensor for key, tensor in stored.items()}
    tensors, per_core = {}, {}
    for key, tensor in stored.items():
        match = _PER_CORE_KEY.match(key)
        if match:
            per_core.setdefault(match["matrix"], {})[int(match["index"])] = tensor
        else:
            tensors[key] = tensor
    for matrix, cores in per_core.items():
        if sorted(cores) != list(range(len(cores))):
            raise ValueError(f"{directory}/{WEIGHTS_NAME}: {matrix} has cores {sorted(cores)}, not "
                             f"0..{len(cores) - 1}; the file is damaged, re-save the adapter")
        tensors[f"{matrix}.tt_cores"] = torch.cat([cores[k].reshape(-1) for k in range(len(cores))])
    return tensors


def _check_base_matches(model: nn.Module, cfg: LorettaConfig, meta: dict) -> None:
    """The adapter's modules must be exactly the ones its config targets in ``model``, same shapes."""
    injected = adapter_layers(model)
    modules = ({name: layer.base_layer for name, layer in injected.items()} if injected
               else {item.name: item.module for item in plan_injection(model, cfg)})
    saved = meta.get("target_shapes", {})
    problems = [f"{name} is missing" for name in sorted(set(saved) - set(modules))]
    problems += [f"{name} is not in the adapter" for name in sorted(set(modules) - set(saved))]
    problems += [f"{name} has shape {list(linear_shape(modules[name]))}, the adapter expects {shape}"
                 for name, shape in saved.items()
                 if name in modules and list(linear_shape(modules[name])) != list(shape)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        trained_on = meta.get("base", {}).get("_name_or_path") or "another model"
        raise ValueError(f"this adapter was trained on a different base model ({trained_on}): {shown}. "
                         "Load it onto the base model it was trained on.")


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Put a saved adapter onto ``model`` (injecting it first if the model has none) and return it.

    Refuses, before changing anything, a base model whose shapes differ from the adapter's, or an
    already-adapted model whose LorettaConfig differs (the message names the differing fields).
    """
    cfg, meta = read_adapter_config(directory)
    current: LorettaConfig | None = getattr(model, "loretta_config", None)
    if current is not None and current.to_dict() != cfg.to_dict():
        diffs = [f"{k}: model {v!r} vs adapter {cfg.to_dict()[k]!r}"
                 for k, v in current.to_dict().items() if cfg.to_dict()[k] != v]
        raise ValueError(f"the adapter's config does not match this model's adapter ({'; '.join(diffs)}); "
                         "load it onto a fresh base model instead")
    _check_base_matches(model, cfg, meta)
    state = read_adapter_tensors(directory)
    if current is None:
        inject(model, cfg)
    params = dict(model.named_parameters())
    expected = set(trainable_parameter_names(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    bad_shape = [n for n in expected & set(state) if tuple(state[n].shape) != tuple(params[n].shape)]
    if missing or unexpected or bad_shape:
        raise ValueError(f"{directory}/{WEIGHTS_NAME} does not fit its config: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}; re-save the adapter")
    with torch.no_grad():
        for name in expected:
            params[name].copy_(state[name].to(params[name].dtype))
    return model

