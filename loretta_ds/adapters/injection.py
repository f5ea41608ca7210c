"""Put LoRETTA layers into a model, decide what trains, and count parameters.

Knows nn.Linear and Hugging Face LLaMA module names; knows nothing about DeepSpeed (it only reads
``ds_shape`` / ``ds_numel``, which a ZeRO-3-partitioned parameter carries).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..tt import modes_for, useful_rank
from .config import LorettaConfig
from .layers import LorettaAdpLinear, LorettaRepLinear, linear_shape

ADAPTER_LAYERS = (LorettaRepLinear, LorettaAdpLinear)
ADAPTER_PREFIX = "loretta_"
# Projections that write into the residual stream get an output adapter; the ones that read
# from it get an input adapter (on LLaMA: input of gate_proj and up_proj, output of down_proj).
OUTPUT_ADAPTER_MODULES = ("down_proj", "o_proj")


def _is_linear(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and weight is not None


def is_norm(module: nn.Module) -> bool:
    """A norm layer (RMSNorm, LayerNorm): what train_norms trains."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def _matches(module_name: str, pattern: str) -> bool:
    """PEFT's rule: a pattern names a module if it equals the path or is its trailing part."""
    return module_name == pattern or module_name.endswith("." + pattern)


@dataclass
class PlannedLayer:
    name: str
    module: nn.Linear
    modes: tuple[list[int], list[int]]
    position: str = ""


def is_injected(model: nn.Module) -> bool:
    return any(isinstance(m, ADAPTER_LAYERS) for m in model.modules())


def _override_for(cfg: LorettaConfig, module_name: str, factor: str, d_in: int, d_out: int,
                  used: set[str]) -> list[int] | None:
    for key, modes in cfg.tt_shapes.items():
        if key == f"{d_in}x{d_out}" or (key.endswith("." + factor) and _matches(module_name, key[: -len(factor) - 1])):
            used.add(key)
            return modes
    return None


def factor_modes(cfg: LorettaConfig, module_name: str, factor: str, d_in: int, d_out: int,
                 used: set[str] | None = None) -> list[int]:
    """The TT modes of one factor (A/B or down/up, d_in x d_out) of ``module_name``'s adapter:
    the config's ``tt_shapes`` override if one names it, else ``modes_for``'s choice. Also what
    reads an adapter file back without a model (the export) uses to cut ``tt_cores`` into cores."""
    override = _override_for(cfg, module_name, factor, d_in, d_out, used if used is not None else set())
    try:
        return modes_for(d_in, d_out, override)
    except ValueError as err:
        raise ValueError(f"{module_name} factor {factor}: {err}") from None


def _tied_output_embedding(model: nn.Module) -> nn.Module | None:
    """The output projection (lm_head) when the model ties it to the input embeddings, else None."""
    config = getattr(model, "config", None)
    get_output = getattr(model, "get_output_embeddings", None)
    if config is None or get_output is None or not getattr(config, "tie_word_embeddings", False):
        return None
    return get_output()


def plan_injection(model: nn.Module, cfg: LorettaConfig, named_modules=None) -> list[PlannedLayer]:
    """Find every target and resolve its TT modes; raise before the model is touched.

    ``named_modules``: (name, module) pairs to plan on instead of ``model.named_modules()`` (the
    PEFT tuner passes the modules as they were before its adapters wrapped them).
    """
    pairs = model.named_modules() if named_modules is None else named_modules
    linears = {name: m for name, m in pairs if _is_linear(m)}
    plan: list[PlannedLayer] = []
    used_overrides: set[str] = set()
    for pattern in cfg.target_modules:
        if not any(_matches(name, pattern) for name in linears):
            leaf_names = sorted({name.rsplit(".", 1)[-1] for name in linears})
            raise ValueError(
                f"target module {pattern!r} matches no linear layer of this model; the linear "
                f"layers are named: {', '.join(leaf_names)} (presets: attn, mlp, all)"
            )
    tied_output = _tied_output_embedding(model)
    for name, module in linears.items():
        if not any(_matches(name, pattern) for pattern in cfg.target_modules):
            continue
        if module is tied_output:
            raise ValueError(
                f"{name} shares its weight with the input embeddings (tie_word_embeddings), so an update "
                f"to it has no place in a merged checkpoint; remove {name.rsplit('.', 1)[-1]} from "
                "target_modules")
        out_f, in_f = linear_shape(module)
        if cfg.method == "rep":
            factors = (("A", in_f, cfg.r), ("B", cfg.r, out_f))
            position = ""
        else:
            position = "output" if name.rsplit(".", 1)[-1] in OUTPUT_ADAPTER_MODULES else "input"
            d = in_f if position == "input" else out_f
            factors = (("down", d, cfg.bottleneck), ("up", cfg.bottleneck, d))
        modes = [factor_modes(cfg, name, factor, d_in, d_out, used_overrides) for factor, d_in, d_out in factors]
        for (factor, d_in, d_out), factor_modes_ in zip(factors, modes):
            _check_tensor_rank(cfg, name, factor, d_in, d_out, factor_modes_)
        plan.append(PlannedLayer(name, module, (modes[0], modes[1]), position))
    unused = sorted(set(cfg.tt_shapes) - used_overrides)
    if unused:
        raise ValueError(
            f"tt_shapes keys {unused} match no adapted factor; use '<module>.<factor>' with factor "
            f"{'A/B' if cfg.method == 'rep' else 'down/up'} or '<d_in>x<d_out>'"
        )
    return plan


def _check_tensor_rank(cfg: LorettaConfig, name: str, factor: str, d_in: int, d_out: int, modes: list[int]) -> None:
    """A bond rank beyond what a factor's modes can use is refused before any core exists: it adds
    no capacity, and its cores grow with the square of the rank (--tensor_rank 100000 would ask for
    terabytes)."""
    most = useful_rank(modes)
    if cfg.tensor_rank > most:
        raise ValueError(f"tensor_rank {cfg.tensor_rank} is more than {name}'s {factor} factor ({d_in} x {d_out}, TT "
                         f"modes {'x'.join(map(str, modes))}) can use: at most {most} at its widest bond, beyond "
                         f"which its cores hold more numbers than the dense {d_in} x {d_out} matrix and add no "
                         f"capacity; use --tensor_rank {most} or less (the paper's is 5)")


def _build_layer(item: PlannedLayer, cfg: LorettaConfig) -> nn.Module:
    if cfg.method == "rep":
        layer = LorettaRepLinear(item.module, cfg.r, cfg.alpha, cfg.tensor_rank, cfg.dropout, *item.modes)
    else:
        layer = LorettaAdpLinear(item.module, item.position, cfg.bottleneck, cfg.tensor_rank,
                                 cfg.activation, cfg.adapter_scaling, *item.modes)
    layer.reset_parameters(cfg.init)
    return layer


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject(model: nn.Module, cfg: LorettaConfig) -> nn.Module:
    """Wrap every target linear layer of ``model`` in a LoRETTA layer, in place, and return it.

    Afterwards only adapter parameters (and norm weights when ``cfg.train_norms``) require grad.
    Cores are created in the base weight's dtype and device and initialized from torch's global
    RNG: seed every rank alike. Everything is validated before the model changes.
    """
    if is_injected(model):
        raise ValueError("this model already has LoRETTA layers; load a fresh base model, or call "
                         "merge_and_unload(model) first")
    plan = plan_injection(model, cfg)
    for item in plan:
        _set_submodule(model, item.name, _build_layer(item, cfg))
    model.loretta_config = cfg
    mark_trainable(model)
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """The one rule for "is this trainable state": adapter parameters, plus norm weights when
    the model's LorettaConfig says train_norms. Names as in ``model.named_parameters()``."""
    cfg: LorettaConfig | None = getattr(model, "loretta_config", None)
    if cfg is None:
        raise ValueError("this model has no LoRETTA adapter; call inject(model, cfg) or load_adapter first")
    norm_params = set()
    if cfg.train_norms:
        for module_name, module in model.named_modules():
            if is_norm(module):
                norm_params.update(f"{module_name}.{p}" if module_name else p
                                   for p, _ in module.named_parameters(recurse=False))
    return [name for name, _ in model.named_parameters()
            if ADAPTER_PREFIX in name or name in norm_params]


def mark_trainable(model: nn.Module) -> None:
    """requires_grad = True exactly for ``trainable_parameter_names(model)``."""
    trainable = set(trainable_parameter_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)}


def _numel(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", param.numel()))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; real sizes also for ZeRO-3-partitioned and meta models."""
    trainable = total = 0
    for param in model.parameters():
        total += _numel(param)
        if param.requires_grad:
            trainable += _numel(param)
    return trainable, total
