"""The input gradient of frozen bfloat16 linear layers on CPUs without native bf16 (AVX2 only).

Backpropagating through a frozen layer y = x W^T needs only grad_x = grad_y W. PyTorch (2.13) runs that
product in bf16 on such CPUs through a fallback kernel for that operand layout: on this project's AMD
EPYC (AVX2), one thread, 8 tokens and an 8192 x 8192 bf16 weight, the forward x W^T takes 0.23 s but
grad_y W takes 10 s, so a LLaMA-2-70B-width layer spends minutes in backward for a few tokens. The same
product as one matrix-vector product W^T g per token takes 0.025 s per token, and float32 blocks
0.56 s for any token count (figures and command in docs/benchmarks.md). Only the frozen base layers
are rerouted; the adapters' own products and every float32 or GPU run are left as they were.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many token rows, per-token matrix-vector products; above, float32 blocks of the weight.
MATVEC_ROWS = 16
BLOCK_ROWS = 1024  # rows of W converted to float32 at a time (32 MiB at width 8192)


def input_gradient(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad @ weight for grad (..., out_features) and weight (out_features, in_features), in weight's dtype."""
    rows = grad.reshape(-1, grad.shape[-1])
    if rows.shape[0] <= MATVEC_ROWS:
        result = torch.stack([weight.t().mv(row) for row in rows.to(weight.dtype)])
    else:
        result = torch.zeros(rows.shape[0], weight.shape[1], dtype=torch.float32, device=weight.device)
        for start in range(0, weight.shape[0], BLOCK_ROWS):
            stop = start + BLOCK_ROWS
            result.addmm_(rows[:, start:stop].float(), weight[start:stop].float())
        result = result.to(weight.dtype)
    return result.reshape(*grad.shape[:-1], weight.shape[1])


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return input_gradient(grad, weight) if ctx.needs_input_grad[0] else None, None, None


def _frozen_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if (weight.requires_grad or (bias is not None and bias.requires_grad) or weight.dtype != torch.bfloat16
            or x.device.type != "cpu"):
        return F.linear(x, weight, bias)
    return _FrozenLinear.apply(x, weight, bias)


def reroute_frozen_bf16_linears(model: nn.Module) -> int:
    """Give every plain nn.Linear the fast input gradient for CPU bf16 runs; returns how many.

    The module's hooks (ZeRO-3 gathers its partition in them) still run: only ``forward`` changes, and
    it falls back to F.linear whenever the weight trains, is not bf16 or the input is not on the CPU.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = _frozen_forward.__get__(module)
            count += 1
    return count
