"""The two LoRETTA layers. Each wraps an existing nn.Linear (kept as ``base_layer``, never copied).

LorettaRepLinear:  y = W0 x + (alpha / r) * B(A(dropout(x)))     A: d_in -> r, B: r -> d_out
LorettaAdpLinear:  a series bottleneck adapter  h -> h + s * up(act(down(h)))  on the layer's
                   input (position "input") or on its output (position "output").
A, B, down and up are TT factor matrices (loretta_ds.tt).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tt import TTFactorMatrix

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


def init_factor_pair(first: TTFactorMatrix, second: TTFactorMatrix, init: str) -> None:
    """Initialize an adapter's two TT factors (A, B or down, up): "reference" draws the reference's
    Gaussian cores for both; "zero" the same, but the second factor's last core is zero, so the
    adapter's output is 0 and the adapted model starts as the base model."""
    first.reset_reference_()
    second.reset_reference_()
    if init == "zero":
        second.zero_last_core_()


def rep_delta_weight(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """rep's dense update scaling * (A B)^T, (out_features, in_features), from A (in, r) and B (r, out)."""
    return (a @ b).T * scaling


def add_rep_update(result: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   scaling: float) -> torch.Tensor:
    """result + scaling * (x A) B, for x (..., in) (dropout already applied) and result (..., out).

    (x A) B costs tokens * r * (d_in + d_out), the same as LoRA; never form A B per token.
    The activations (tokens x features) dominate the memory traffic, so: the scale goes on
    B (r x d_out values) instead of on the output, the add into the base output happens
    inside the GEMM (addmm), and A goes to the GEMM in nn.Linear's (out, in) layout, whose
    backward GEMMs MKL/cuBLAS run fastest (the transposed copy is d_in * r values).
    """
    r, out_features = b.shape
    xa = F.linear(x.to(a.dtype), a.t().contiguous())
    scaled_b = (b * scaling).to(result.dtype)
    out = torch.addmm(result.reshape(-1, out_features), xa.reshape(-1, r).to(result.dtype), scaled_b)
    return out.view(result.shape)


@torch.no_grad()
def init_adp_biases(down_bias: torch.Tensor, up_bias: torch.Tensor, init: str) -> None:
    """adp's biases: U(-1/sqrt(fan_out), 1/sqrt(fan_out)) as the reference; "zero": up's bias is 0."""
    for bias in (down_bias, up_bias):
        bound = bias.numel() ** -0.5
        bias.copy_(torch.empty(bias.shape, dtype=torch.float32).uniform_(-bound, bound))
    if init == "zero":
        up_bias.zero_()


def adp_update(h: torch.Tensor, down: torch.Tensor, up: torch.Tensor, down_bias: torch.Tensor,
               up_bias: torch.Tensor, activation: str, scaling: float) -> torch.Tensor:
    """s * up(act(down(h))) for h (..., features), from the dense down (features, bottleneck) and
    up (bottleneck, features) matrices and their biases.

    Biases inside the GEMMs and the scale on up (bottleneck x d values), not on the
    (tokens x d) output: two passes over the activations fewer, forward and backward.
    """
    hidden = _ACTIVATIONS[activation](F.linear(h.to(down.dtype), down.t().contiguous(), down_bias))
    out = F.linear(hidden, (up * scaling).t().contiguous(), up_bias * scaling)
    return out.to(h.dtype)


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a linear layer, also when ZeRO-3 has partitioned its weight.

    A partitioned weight has an empty ``shape``; DeepSpeed keeps the real one in ``ds_shape``.
    """
    weight = layer.weight
    shape = tuple(getattr(weight, "ds_shape", weight.shape))
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D linear weight, got shape {shape}")
    return int(shape[0]), int(shape[1])


class LorettaRepLinear(nn.Module):
    """LoRETTA_rep around ``base_layer``: a rank-r LoRA update whose two factors are TT matrices.

    Shapes: x (..., in_features) -> (..., out_features). ``delta_weight()`` is the dense
    (out_features, in_features) update, alpha / r included; forward and merge both use it.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, tensor_rank: int,
                 dropout: float = 0.0, modes_a: list[int] | None = None,
                 modes_b: list[int] | None = None):
        super().__init__()
        self.out_features, self.in_features = linear_shape(base_layer)
        self.base_layer = base_layer
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        self.r, self.scaling = r, alpha / r
        self.loretta_A = TTFactorMatrix(self.in_features, r, tensor_rank, modes_a, dtype, device)
        self.loretta_B = TTFactorMatrix(r, self.out_features, tensor_rank, modes_b, dtype, device)
        self.loretta_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def reset_parameters(self, init: str) -> None:
        """"reference": Gaussian cores everywhere; "zero": the same, but B is exactly zero."""
        init_factor_pair(self.loretta_A, self.loretta_B, init)

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha / r) * (A B)^T, shape (out_features, in_features)."""
        return rep_delta_weight(self.loretta_A(), self.loretta_B(), self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        return add_rep_update(result, self.loretta_dropout(x), self.loretta_A(), self.loretta_B(), self.scaling)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (needs the full weight: gather it under ZeRO-3)."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.add_(self.delta_weight().to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (restores the base weight up to rounding)."""
        if self.merged:
            weight = self.base_layer.weight
            weight.sub_(self.delta_weight().to(weight.dtype))
            self.merged = False


class LorettaAdpLinear(nn.Module):
    """LoRETTA_adp: a TT bottleneck adapter on the input or the output of ``base_layer``.

    position "input":  y = base(h + s * up(act(down(h))))
    position "output": y = z + s * up(act(down(z))),  z = base(h)
    down (d -> bottleneck) and up (bottleneck -> d) are TT matrices with biases; d is the layer's
    in_features for "input" and out_features for "output". Nonlinear, so never mergeable.
    """

    def __init__(self, base_layer: nn.Linear, position: str, bottleneck: int, tensor_rank: int,
                 activation: str = "relu", scaling: float = 1.0,
                 modes_down: list[int] | None = None, modes_up: list[int] | None = None):
        super().__init__()
        if position not in ("input", "output"):
            raise ValueError(f"adapter position must be 'input' or 'output', got {position!r}")
        self.out_features, self.in_features = linear_shape(base_layer)
        self.base_layer, self.position = base_layer, position
        self.features = self.in_features if position == "input" else self.out_features
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        self.scaling, self.activation = scaling, activation
        self.loretta_down = TTFactorMatrix(self.features, bottleneck, tensor_rank, modes_down, dtype, device)
        self.loretta_up = TTFactorMatrix(bottleneck, self.features, tensor_rank, modes_up, dtype, device)
        self.loretta_down_bias = nn.Parameter(torch.zeros(bottleneck, dtype=dtype, device=device))
        self.loretta_up_bias = nn.Parameter(torch.zeros(self.features, dtype=dtype, device=device))

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        """"reference": Gaussian cores, biases U(-1/sqrt(fan_out), 1/sqrt(fan_out)) as the reference;
        "zero": the same, but up's last core and up's bias are zero, so the adapter outputs 0."""
        init_factor_pair(self.loretta_down, self.loretta_up, init)
        init_adp_biases(self.loretta_down_bias, self.loretta_up_bias, init)

    def adapter(self, h: torch.Tensor) -> torch.Tensor:
        """s * up(act(down(h))) for h (..., features)."""
        return adp_update(h, self.loretta_down(), self.loretta_up(), self.loretta_down_bias, self.loretta_up_bias,
                          self.activation, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == "input":
            return self.base_layer(x + self.adapter(x))
        out = self.base_layer(x)
        return out + self.adapter(out)
