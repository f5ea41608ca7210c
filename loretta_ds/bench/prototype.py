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
