"""A prototype proposed for the core, kept here so the bench can measure it before it lands.

One parameter per TT matrix: same maths, a few times fewer tensors for DeepSpeed to handle.

"""
from __future__ import annotations

import types

import torch
from torch import nn


# ---------------------------------------------------------------- one parameter per TT matrix
#
# Each TT core is its own nn.Parameter, so a LLaMA-2-7B rep run trains 577 tensors (512 cores +
# 65 norms) where LoRA trains 128. Under ZeRO-3 DeepSpeed does per-tensor work every step (a
# gradient hook and bucket copy in backward, partition bookkeeping and a CPU-Adam call in the
# optimizer step, an all-gather of each updated persistent tensor after it), which the element
# count does not pay for. Storing a matrix's cores in one flat parameter, viewed as cores in
# forward, keeps the maths and AdamW's elementwise update identical and divides that count by
# the number of cores (4-6).

def _fresh_flat_cores(shapes: list[tuple[int, int, int]], d_in: int, d_out: int, zero_last: bool,
                      dtype: torch.dtype) -> torch.Tensor:
    """Reference-style random cores in one flat vector; ``zero_last``: the last core zero, as the
    zero init does for B (rep) and up (adp), so the model starts unchanged and still trains."""
    sizes = [a * n * b for a, n, b in shapes]
    flat = torch.randn(sum(sizes)) * (d_in + d_out) ** (-0.5 / len(shapes))
    if zero_last:
        flat[-sizes[-1]:] = 0
    return flat.to(dtype)


def _core_views(flat: torch.Tensor, shapes: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    cores, offset = [], 0
    for shape in shapes:
        size = shape[0] * shape[1] * shape[2]
        cores.append(flat[offset:offset + size].view(shape))
        offset += size
    return cores


def _flat_forward(self) -> torch.Tensor:
    from ..tt import tt_to_dense

    return tt_to_dense(_core_views(self.loretta_flat_cores, self.core_shapes), self.d_in, self.d_out)


def flatten_tt_cores(model: nn.Module) -> int:
    """Replace every TT matrix's cores by one flat parameter (fresh reference-style values, the
    last core of B / up zero, as the zero init); returns how many matrices changed. For timing
    studies: the values of the old cores are not carried over."""
    from ..adapters import mark_trainable
    from ..tt import TTFactorMatrix

    changed = 0
    for name, module in model.named_modules():
        if not isinstance(module, TTFactorMatrix) or not hasattr(module, "cores"):
            continue
        shapes = [tuple(getattr(core, "ds_shape", core.shape)) for core in module.cores]
        template = module.cores[0]
        flat = _fresh_flat_cores(shapes, module.d_in, module.d_out, name.endswith(("loretta_B", "loretta_up")),
                                 template.dtype)
        del module.cores
        module.core_shapes = shapes
        module.loretta_flat_cores = nn.Parameter(flat.to(template.device if template.device.type != "meta" else "cpu"))
        module.forward = types.MethodType(_flat_forward, module)
        changed += 1
    if changed and hasattr(model, "loretta_config"):
        mark_trainable(model)
    return changed


# ---------------------------------------------------------------- TT factors inside the layer
#
# Under ZeRO-3 DeepSpeed also works per module: every submodule gets forward and backward hooks
# that fetch and release its parameters. A rep layer has two TT submodules (with their cores);
# LoRA's has two Linears. Here each factor becomes one flat parameter of the rep layer itself,
# contracted in the layer's forward, so ZeRO-3 sees one module and two tensors per adapted
# projection, like LoRA.

def _inline_rep_forward(self, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    from ..tt import tt_to_dense

    def dense(name: str) -> torch.Tensor:
        shapes, d_in, d_out = self.inline_tt_meta[name]
        return tt_to_dense(_core_views(getattr(self, f"{name}_flat"), shapes), d_in, d_out)

    result = self.base_layer(x)
    a, b = dense("loretta_A"), dense("loretta_B")
    xa = F.linear(self.loretta_dropout(x).to(a.dtype), a.t().contiguous())
    out = torch.addmm(result.reshape(-1, self.out_features), xa.reshape(-1, self.r).to(result.dtype),
                      (b * self.scaling).to(result.dtype))
    return out.view(result.shape)


def inline_tt_factors(model: nn.Module) -> int:
    """Replace each rep layer's TT submodules by flat parameters of the layer (fresh values, B
    zero, as the zero init); returns how many layers changed. For timing studies only."""
    from ..adapters import LorettaRepLinear, mark_trainable

    changed = 0
    for module in model.modules():
        if not isinstance(module, LorettaRepLinear):
            continue
        module.inline_tt_meta = {}
        for name in ("loretta_A", "loretta_B"):
            tt = getattr(module, name)
            shapes = [tuple(getattr(core, "ds_shape", core.shape)) for core in tt.cores]
            flat = _fresh_flat_cores(shapes, tt.d_in, tt.d_out, name == "loretta_B", tt.cores[0].dtype)
            module.inline_tt_meta[name] = (shapes, tt.d_in, tt.d_out)
            delattr(module, name)
            module.register_parameter(f"{name}_flat", nn.Parameter(flat))
        module.forward = types.MethodType(_inline_rep_forward, module)
        changed += 1
    if changed and hasattr(model, "loretta_config"):
        mark_trainable(model)
    return changed
