"""The parameter report: how every parameter is held on this rank (ZeRO-3 partition or whole,
trainable or frozen), with the check that every trainable tensor is whole.
"""
from __future__ import annotations

import torch

from .zero3_params import full_numel, is_zero3_param


def parameter_report(model: torch.nn.Module) -> dict:
    """How every parameter is held on this rank: partitioned (ZeRO-3 slices) or persistent/whole,
    trainable or frozen; counts, element numbers and local bytes. Also checks that every trainable
    tensor is whole here (``trainable_all_whole``)."""
    report = {name: {"tensors": 0, "numel": 0, "local_bytes": 0}
              for name in ("partitioned", "persistent", "trainable", "frozen")}
    not_whole: list[str] = []
    for name, param in model.named_parameters():
        numel = full_numel(param)
        if is_zero3_param(param) and not getattr(param, "ds_persist", False):
            kind, local = "partitioned", param.ds_tensor.numel() * param.ds_tensor.element_size()
        else:
            kind, local = "persistent", numel * param.element_size()
        owner = "trainable" if param.requires_grad else "frozen"
        for key in (kind, owner):
            report[key]["tensors"] += 1
            report[key]["numel"] += numel
            report[key]["local_bytes"] += local
        if param.requires_grad and (kind == "partitioned" or tuple(param.shape) != tuple(getattr(param, "ds_shape", param.shape))):
            not_whole.append(name)
    frozen_partitioned = sum(1 for _, p in model.named_parameters()
                             if not p.requires_grad and is_zero3_param(p) and not getattr(p, "ds_persist", False))
    report["frozen_partitioned_tensors"] = frozen_partitioned
    report["trainable_not_whole"] = not_whole[:20]
    report["trainable_all_whole"] = not not_whole
    return report


def describe_report(report: dict) -> str:
    def part(key: str) -> str:
        return f"{report[key]['tensors']} tensors / {report[key]['numel']:,} params"

    return (f"parameters: partitioned {part('partitioned')}; persistent (whole on every rank) "
            f"{part('persistent')}; trainable {part('trainable')}; frozen {part('frozen')}")
