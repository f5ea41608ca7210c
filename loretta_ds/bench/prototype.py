"""Prototype forwards for the two LoRETTA layers, proposed for loretta_ds/adapters/layers.py.

Same maths as the core layers, less memory traffic. On CPU the adapter's cost is dominated by
passes over (tokens x features) activations and by the GEMM layout, not by FLOPs:

1. Fold the scale into the small dense factor (r x d_out or b x d, thousands of values) instead
   of multiplying the (tokens x d_out) activation by it: one full pass less in forward, one in
   backward.
2. Fuse the bias and the residual/base add into the GEMM (F.linear with bias, torch.addmm with
   the base output as accumulator) instead of separate elementwise adds.
3. Hand the factor to the GEMM in nn.Linear's (out, in) layout: ``F.linear(x, M.t().contiguous())``
   instead of ``x @ M``. The transpose copies a matrix of d * r values (free); in exchange the
   backward GEMMs run in the layout MKL/oneDNN are fastest at (measured ~1.5x faster on CPU for
   the weight gradient x^T g with a skinny output).

rep, core:  result + ((x A) B * s)               rep, here: addmm(result, x A, s B)
adp, core:  h + ((relu(h D + b_d) U + b_u) * s)  adp, here: h + linear(relu(linear(h, D^T, b_d)), s U^T, s b_u)

The bench runs these as contenders rep_fused / adp_fused (swapping ``forward`` on injected
layers), so the table shows what the change buys; tests check they equal the core layers.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.layers import _ACTIVATIONS, LorettaAdpLinear, LorettaRepLinear


def rep_forward(self: LorettaRepLinear, x: torch.Tensor) -> torch.Tensor:
    result = self.base_layer(x)
    if self.merged:
        return result
    a, b = self.loretta_A(), self.loretta_B()
    xa = F.linear(self.loretta_dropout(x).to(a.dtype), a.t().contiguous())
    update = (b * self.scaling).to(result.dtype)
    out = torch.addmm(result.reshape(-1, self.out_features), xa.reshape(-1, self.r).to(result.dtype), update)
    return out.view(result.shape)


def adp_residual(self: LorettaAdpLinear, h: torch.Tensor) -> torch.Tensor:
    """h + s * up(act(down(h))) with biases inside the GEMMs and s on the small matrices."""
    down, up = self.loretta_down(), self.loretta_up()
    hidden = _ACTIVATIONS[self.activation](F.linear(h.to(down.dtype), down.t().contiguous(), self.loretta_down_bias))
    out = F.linear(hidden, (up * self.scaling).t().contiguous(), self.loretta_up_bias * self.scaling)
    return h + out.to(h.dtype)


def adp_forward(self: LorettaAdpLinear, x: torch.Tensor) -> torch.Tensor:
    if self.position == "input":
        return self.base_layer(adp_residual(self, x))
    return adp_residual(self, self.base_layer(x))


def use_prototype_forwards(model: nn.Module) -> int:
    """Swap the forward of every LoRETTA layer in ``model`` for the prototype; returns how many."""
    swapped = 0
    for module in model.modules():
        if isinstance(module, LorettaRepLinear):
            module.forward = types.MethodType(rep_forward, module)
            swapped += 1
        elif isinstance(module, LorettaAdpLinear):
            module.forward = types.MethodType(adp_forward, module)
            swapped += 1
    return swapped


# ---------------------------------------------------------------- one parameter per TT matrix
#
# Each TT core is its own nn.Parameter, so a LLaMA-2-7B rep run trains 577 tensors (512 cores +
# 65 norms) where LoRA trains 128. Under ZeRO-3 DeepSpeed does per-tensor work every step (a
# gradient hook and bucket copy in backward, partition bookkeeping and a CPU-Adam call in the
# optimizer step, an all-gather of each updated persistent tensor after it), which the element
# count does not pay for. Storing a matrix's cores in one flat parameter, viewed as cores in
# forward, keeps the maths and AdamW's elementwise update identical and divides that count by
# the number of cores (4-6).

def _flat_forward(self) -> torch.Tensor:
    from ..tt import tt_to_dense

    cores, offset = [], 0
    for shape in self.core_shapes:
        size = shape[0] * shape[1] * shape[2]
        cores.append(self.loretta_flat_cores[offset:offset + size].view(shape))
        offset += size
    return tt_to_dense(cores, self.d_in, self.d_out)


def flatten_tt_cores(model: nn.Module) -> int:
    """Replace every TT matrix's cores by one flat parameter (fresh reference-style values, the
    last core zero, as the zero init); returns how many matrices changed. For timing studies:
    the values of the old cores are not carried over."""
    from ..adapters import mark_trainable
    from ..tt import TTFactorMatrix

    changed = 0
    for module in model.modules():
        if not isinstance(module, TTFactorMatrix) or not hasattr(module, "cores"):
            continue
        shapes = [tuple(getattr(core, "ds_shape", core.shape)) for core in module.cores]
        template = module.cores[0]
        sizes = [a * n * b for a, n, b in shapes]
        flat = torch.randn(sum(sizes), dtype=template.dtype) * (module.d_in + module.d_out) ** (-0.5 / len(shapes))
        flat[-sizes[-1]:] = 0
        del module.cores
        module.core_shapes = shapes
        module.loretta_flat_cores = nn.Parameter(flat.to(template.device if template.device.type != "meta" else "cpu"))
        module.forward = types.MethodType(_flat_forward, module)
        changed += 1
    if changed and hasattr(model, "loretta_config"):
        mark_trainable(model)
    return changed
