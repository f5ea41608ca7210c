"""Dense LoRETTA_rep updates straight from an adapter file, without building any model.

For a target module with base weight W (out, in), the adapter file holds the TT cores of
A (in x r) and B (r x out) back to back as ``<module>.loretta_A.tt_cores`` /
``<module>.loretta_B.tt_cores``; the config's modes and tensor rank cut them into cores
(r_{k-1}, n_k, r_k), exactly as the layer does. The merged weight is W + (alpha / r) * (A B)^T,
which equals the LoRA form W + (alpha / r) * lora_B @ lora_A with lora_A = A^T (r, in) and
lora_B = B^T (out, r).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..adapters.config import LorettaConfig, check_mergeable
from ..adapters.injection import factor_modes
from ..tt import core_shapes, split_cores, tt_to_dense

_FACTOR_KEY = re.compile(r"^(?P<module>.+)\.loretta_(?P<factor>A|B)\.tt_cores$")


@dataclass
class RepUpdate:
    """The trained update of one target module: Delta W = scaling * (A B)^T, shape (out, in)."""

    module: str
    out_features: int
    in_features: int
    rank: int
    scaling: float
    a_cores: list[torch.Tensor]
    b_cores: list[torch.Tensor]

    @property
    def weight_name(self) -> str:
        return f"{self.module}.weight"

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (in, r), B (r, out)) in float32, whatever dtype the cores were trained in."""
        a = tt_to_dense([c.float() for c in self.a_cores], self.in_features, self.rank)
        b = tt_to_dense([c.float() for c in self.b_cores], self.rank, self.out_features)
        return a, b

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_A (r, in), lora_B (out, r)) in float32: the same update in PEFT's layout."""
        a, b = self.factors()
        return a.T.contiguous(), b.T.contiguous()


def _factor_cores(cfg: LorettaConfig, module: str, factor: str, d_in: int, d_out: int,
                  flat: torch.Tensor | None, problems: list[str]) -> list[torch.Tensor]:
    """One factor's cores cut from its flat tensor; a problem noted (and []) if it cannot be."""
    where = f"{module}.loretta_{factor}"
    if flat is None:
        problems.append(f"{where} is missing")
        return []
    try:
        shapes = core_shapes(factor_modes(cfg, module, factor, d_in, d_out), cfg.tensor_rank)
        return split_cores(flat, shapes)
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return []


def rep_updates(cfg: LorettaConfig, meta: dict, tensors: dict[str, torch.Tensor]) -> dict[str, RepUpdate]:
    """Every target module's update, checked for completeness and shape; keyed by module name.

    Raises ValueError (before anything is written) for an adp adapter or a damaged adapter file.
    """
    check_mergeable(cfg.method)
    shapes = meta.get("target_shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise ValueError("adapter_config.json has no target_shapes; re-save the adapter with save_adapter")
    flats: dict[tuple[str, str], torch.Tensor] = {}
    stray = []
    for key, tensor in tensors.items():
        match = _FACTOR_KEY.match(key)
        if match:
            flats[(match["module"], match["factor"])] = tensor
        elif "loretta_" in key:
            stray.append(key)
    problems = [f"unexpected adapter tensor {key}" for key in stray]
    problems += [f"cores for {module} which is not in target_shapes"
                 for module, _ in flats if module not in shapes]
    updates = {}
    for module, (out_f, in_f) in shapes.items():
        a_cores = _factor_cores(cfg, module, "A", in_f, cfg.r, flats.get((module, "A")), problems)
        b_cores = _factor_cores(cfg, module, "B", cfg.r, out_f, flats.get((module, "B")), problems)
        updates[module] = RepUpdate(module, int(out_f), int(in_f), cfg.r, cfg.scaling, a_cores, b_cores)
    if problems:
        raise ValueError(f"the adapter file does not match its config: {'; '.join(problems[:5])}"
                         f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}; "
                         "re-save the adapter from the trained model")
    return updates


def norm_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained non-adapter tensors (norm weights), named as in the base checkpoint."""
    return {key: tensor for key, tensor in tensors.items() if "loretta_" not in key}
