"""Merging LoRETTA_rep updates into the base weights (LoRETTA_adp is nonlinear: never mergeable)."""
from __future__ import annotations

from torch import nn

from .config import NOT_MERGEABLE
from .injection import _set_submodule, adapter_layers
from .layers import LorettaAdpLinear, LorettaRepLinear


def _rep_layers(model: nn.Module) -> dict[str, LorettaRepLinear]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("this model has no LoRETTA layers to merge; call inject or load_adapter first")
    if any(isinstance(layer, LorettaAdpLinear) for layer in layers.values()):
        raise ValueError(NOT_MERGEABLE)
    return layers


def merge(model: nn.Module) -> nn.Module:
    """Add every rep update into its base weight; the layers stay, now bypassing the adapter."""
    for layer in _rep_layers(model).values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge``: subtract the updates, the adapters apply in forward again."""
    for layer in _rep_layers(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every rep update and put the plain base layers back: a model with no adapter modules.

    Returns the same (mutated) model object, now a plain transformers model.
    """
    layers = _rep_layers(model)
    for name, layer in layers.items():
        layer.merge()
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, "loretta_config"):
        del model.loretta_config
    return model
