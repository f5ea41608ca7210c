"""PEFT tuner layers of LoRETTA: one per adapted nn.Linear, holding any number of named adapters.

The maths is the project's own (loretta_ds.adapters.layers: the TT factor matrices, their init,
the rep update and the adp bottleneck), called here per adapter. Parameters are named as the
project's layers name theirs, with PEFT's adapter name inserted (``q_proj.loretta_A.default.tt_cores``),
so a saved PEFT adapter holds the same tensor names as ``save_adapter`` writes.
"""
from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ...adapters.config import NOT_MERGEABLE
from ...adapters.layers import (add_rep_update, adp_update, init_adp_biases, init_factor_pair, linear_shape,
                                rep_delta_weight)
from ...tt import TTFactorMatrix


class LorettaLayer(BaseTunerLayer):
    """What both LoRETTA layers share: the wrapped ``base_layer`` and PEFT's adapter bookkeeping."""

    def _init_base(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.out_features, self.in_features = linear_shape(base_layer)
        self._disable_adapters = False
        self.merged_adapters = []

    def _factory(self) -> dict:
        """Adapter tensors are created where the base weight is, in its dtype (float32 when the
        base weight is not floating point, e.g. packed quantized weights)."""
        weight = self.get_base_layer().weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        return {"dtype": dtype, "device": weight.device}

    def _active(self, container: nn.ModuleDict) -> list[str]:
        return [name for name in self.active_adapters if name in container]


class RepLinear(nn.Module, LorettaLayer):
    """LoRETTA_rep: y = W0 x + sum over active adapters of (alpha / r) * B(A(dropout(x)))."""

    adapter_layer_names = ("loretta_A", "loretta_B")
    other_param_names = ("r", "scaling", "loretta_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, modes: tuple[list[int], list[int]]):
        super().__init__()
        self._init_base(base_layer)
        self.loretta_A, self.loretta_B = nn.ModuleDict(), nn.ModuleDict()
        self.loretta_dropout = nn.ModuleDict()
        self.r, self.scaling = {}, {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, modes)

    def update_layer(self, adapter_name: str, config, modes: tuple[list[int], list[int]]) -> None:
        self.r[adapter_name], self.scaling[adapter_name] = config.r, config.alpha / config.r
        self.loretta_A[adapter_name] = TTFactorMatrix(self.in_features, config.r, config.tensor_rank, modes[0],
                                                      **self._factory())
        self.loretta_B[adapter_name] = TTFactorMatrix(config.r, self.out_features, config.tensor_rank, modes[1],
                                                      **self._factory())
        self.loretta_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        init_factor_pair(self.loretta_A[adapter_name], self.loretta_B[adapter_name], config.init)
        self.set_adapter(self.active_adapters)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense update (alpha / r) * (A B)^T of one adapter, (out_features, in_features)."""
        return rep_delta_weight(self.loretta_A[adapter_name](), self.loretta_B[adapter_name](),
                                self.scaling[adapter_name])

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.loretta_A:
                continue
            weight = self.get_base_layer().weight
            delta = self.get_delta_weight(name).to(weight.dtype)
            if safe_merge and not torch.isfinite(weight + delta).all():
                raise ValueError(f"NaNs or infinities in the merged weights; adapter {name} is broken")
            weight.add_(delta)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight = self.get_base_layer().weight
            weight.sub_(self.get_delta_weight(name).to(weight.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self._active(self.loretta_A):
            result = add_rep_update(result, self.loretta_dropout[name](x), self.loretta_A[name](),
                                    self.loretta_B[name](), self.scaling[name])
        return result

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True  # the update is W0 + scaling * (A B)^T: additive, rank r

    def __repr__(self) -> str:
        return "loretta_rep." + super().__repr__()


class AdpLinear(nn.Module, LorettaLayer):
    """LoRETTA_adp: TT bottleneck adapters h -> h + s * up(act(down(h))) on the layer's input
    (``position`` "input") or output ("output"); active adapters apply one after the other."""

    adapter_layer_names = ("loretta_down", "loretta_up", "loretta_down_bias", "loretta_up_bias")
    other_param_names = ("scaling", "activation")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, modes: tuple[list[int], list[int]],
                 position: str):
        super().__init__()
        if position not in ("input", "output"):
            raise ValueError(f"adapter position must be 'input' or 'output', got {position!r}")
        self._init_base(base_layer)
        self.position = position
        self.features = self.in_features if position == "input" else self.out_features
        self.loretta_down, self.loretta_up = nn.ModuleDict(), nn.ModuleDict()
        self.loretta_down_bias, self.loretta_up_bias = nn.ParameterDict(), nn.ParameterDict()
        self.scaling, self.activation = {}, {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, modes)

    def update_layer(self, adapter_name: str, config, modes: tuple[list[int], list[int]]) -> None:
        factory = self._factory()
        self.scaling[adapter_name], self.activation[adapter_name] = config.adapter_scaling, config.activation
        self.loretta_down[adapter_name] = TTFactorMatrix(self.features, config.bottleneck, config.tensor_rank,
                                                         modes[0], **factory)
        self.loretta_up[adapter_name] = TTFactorMatrix(config.bottleneck, self.features, config.tensor_rank,
                                                       modes[1], **factory)
        self.loretta_down_bias[adapter_name] = nn.Parameter(torch.zeros(config.bottleneck, **factory))
        self.loretta_up_bias[adapter_name] = nn.Parameter(torch.zeros(self.features, **factory))
        init_factor_pair(self.loretta_down[adapter_name], self.loretta_up[adapter_name], config.init)
        init_adp_biases(self.loretta_down_bias[adapter_name], self.loretta_up_bias[adapter_name], config.init)
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def unmerge(self) -> None:
        pass  # nothing is ever merged

    def _adapt(self, h: torch.Tensor) -> torch.Tensor:
        for name in self._active(self.loretta_down):
            h = h + adp_update(h, self.loretta_down[name](), self.loretta_up[name](), self.loretta_down_bias[name],
                               self.loretta_up_bias[name], self.activation[name], self.scaling[name])
        return h

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        if self.position == "input":
            return self.base_layer(self._adapt(x), *args, **kwargs)
        return self._adapt(self.base_layer(x, *args, **kwargs))

    def __repr__(self) -> str:
        return "loretta_adp." + super().__repr__()
