"""Baselines written for the benchmark: the paper's dense "Adapters" and a plain LoRA layer.

DenseAdapterLinear has exactly LoRETTA_adp's placement and trainable set (input of gate_proj and
up_proj, output of down_proj, biases, norm weights); only the two factor matrices are dense, so
the difference in time, memory and size is the tensor train's alone.

PlainLoraLinear is used only where PEFT is not installed (the GPU machine may lack it); it
computes what PEFT's LoRA computes: W0 x + (alpha / r) * B(A x).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_PLACEMENT = {"gate_proj": "input", "up_proj": "input", "down_proj": "output"}


class DenseAdapterLinear(nn.Module):
    """A dense bottleneck adapter h -> h + up(relu(down(h))) on the input or output of base_layer."""

    def __init__(self, base_layer: nn.Linear, position: str, bottleneck: int):
        super().__init__()
        self.base_layer, self.position = base_layer, position
        features = base_layer.in_features if position == "input" else base_layer.out_features
        weight = base_layer.weight
        self.adapter_down = nn.Linear(features, bottleneck, dtype=weight.dtype, device=weight.device)
        self.adapter_up = nn.Linear(bottleneck, features, dtype=weight.dtype, device=weight.device)
        # Zero up-projection: the adapted model starts equal to the base, as LoRETTA's zero init.
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def adapter(self, h: torch.Tensor) -> torch.Tensor:
        return self.adapter_up(F.relu(self.adapter_down(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == "input":
            return self.base_layer(x + self.adapter(x))
        out = self.base_layer(x)
        return out + self.adapter(out)


class PlainLoraLinear(nn.Module):
    """LoRA without PEFT: y = W0 x + (alpha / r) * B(A x), A Kaiming-uniform, B zero (PEFT's init)."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base_layer, self.scaling = base_layer, alpha / r
        weight = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, dtype=weight.dtype, device=weight.device)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, dtype=weight.dtype, device=weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def replace_linears(model: nn.Module, targets: list[str], make) -> int:
    """Replace every nn.Linear whose last name is in ``targets`` by ``make(name, linear)``."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                make(name.rsplit(".", 1)[-1], linear))
    return len(found)


def freeze_all_but(model: nn.Module, prefixes: tuple[str, ...], train_norms: bool) -> None:
    """requires_grad only for parameters named with one of ``prefixes`` (and norms if asked)."""
    norm_params = set()
    if train_norms:
        for module in model.modules():
            if is_norm(module):
                norm_params.update(id(p) for p in module.parameters(recurse=False))
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in prefixes) or id(param) in norm_params)


def add_dense_adapters(model: nn.Module, bottleneck: int = 64, train_norms: bool = True) -> nn.Module:
    """The paper's "Adapters" baseline with LoRETTA_adp's placement and trainable set."""
    count = replace_linears(model, list(ADAPTER_PLACEMENT),
                            lambda leaf, linear: DenseAdapterLinear(linear, ADAPTER_PLACEMENT[leaf], bottleneck))
    if not count:
        raise ValueError("the model has no gate_proj / up_proj / down_proj layers for the dense adapter")
    freeze_all_but(model, ("adapter_",), train_norms=train_norms)
    return model


def add_plain_lora(model: nn.Module, r: int = 8, alpha: float = 16.0,
                   targets: tuple[str, ...] = ("q_proj", "v_proj")) -> nn.Module:
    if not replace_linears(model, list(targets), lambda leaf, linear: PlainLoraLinear(linear, r, alpha)):
        raise ValueError(f"the model has no {', '.join(targets)} layers for LoRA")
    freeze_all_but(model, ("lora_",), train_norms=False)
    return model
