"""Sizes that do not depend on timing: trainable parameters, optimizer state, checkpoint file."""
from __future__ import annotations

import os
import tempfile

import torch
from safetensors.torch import save_file
from torch import nn

from .baselines import is_norm


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg, exp_avg_sq, step).

    Read from the live state after a step, so it is what the optimizer really allocated.
    """
    if optimizer is None:
        return 0
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def _norm_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}


def checkpoint_bytes(model: nn.Module, include_norms: bool = True) -> int:
    """Size on disk of the trainable tensors saved with safetensors (0 if nothing trains).

    ``include_norms=False`` leaves trained norm weights out: the adapter's own size.
    """
    norms = set() if include_norms else _norm_param_ids(model)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()
               if p.requires_grad and id(p) not in norms}
    if not tensors:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trainable.safetensors")
        save_file(tensors, path)
        return os.path.getsize(path)
