"""Dense LoRETTA_rep updates straight from an adapter file, without building any model.

For a target module with base weight W (out, in), the adapter file holds the TT cores of
A (in x r) and B (r x out) as ``<module>.loretta_A.cores.<k>`` / ``<module>.loretta_B.cores.<k>``,
each core (r_{k-1}, n_k, r_k). The merged weight is W + (alpha / r) * (A B)^T, which equals the
LoRA form W + (alpha / r) * lora_B @ lora_A with lora_A = A^T (r, in) and lora_B = B^T (out, r).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..adapters.config import LorettaConfig
from ..adapters.io import WEIGHTS_NAME
from ..tt import tt_to_dense

_CORE_KEY = re.compile(r"^(?P<module>.+)\.loretta_(?P<factor>A|B)\.cores\.(?P<index>\d+)$")

ADP_NOT_MERGEABLE = (
    "LoRETTA_adp adapters cannot be merged into the base weights or written as LoRA: they add a "
    "nonlinear bottleneck h + s * up(act(down(h))) that no change of the linear weights reproduces. "
    "Export this run with --format adapter (loaded with loretta_ds.load_adapter on the base model); "
    "the merged and peft-lora formats need a LoRETTA_rep run (method 'rep')."
)


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


def load_adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of adapter.safetensors (megabytes even for 70B: TT cores and norm weights)."""
    return load_file(str(Path(adapter_dir) / WEIGHTS_NAME))


def _check_train(cores: list[torch.Tensor], d_in: int, d_out: int, where: str) -> list[str]:
    """Problems that would make the cores not contract to a (d_in, d_out) matrix."""
    if not cores:
        return [f"{where} has no cores"]
    if any(c.dim() != 3 for c in cores):
        return [f"{where} has cores that are not 3-D"]
    problems = []
    if cores[0].shape[0] != 1 or cores[-1].shape[2] != 1:
        problems.append(f"{where} does not start and end with bond rank 1")
    if any(left.shape[2] != right.shape[0] for left, right in zip(cores, cores[1:])):
        problems.append(f"{where} has mismatched bond ranks")
    modes = math.prod(c.shape[1] for c in cores)
    if modes != d_in * d_out:
        problems.append(f"{where} modes multiply to {modes}, not {d_in} x {d_out}")
    return problems


def rep_updates(cfg: LorettaConfig, meta: dict, tensors: dict[str, torch.Tensor]) -> dict[str, RepUpdate]:
    """Every target module's update, checked for completeness and shape; keyed by module name.

    Raises ValueError (before anything is written) for an adp adapter or a damaged adapter file.
    """
    if cfg.method != "rep":
        raise ValueError(ADP_NOT_MERGEABLE)
    shapes = meta.get("target_shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise ValueError("adapter_config.json has no target_shapes; re-save the adapter with save_adapter")
    cores: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    stray = []
    for key, tensor in tensors.items():
        match = _CORE_KEY.match(key)
        if match:
            cores.setdefault((match["module"], match["factor"]), {})[int(match["index"])] = tensor
        elif "loretta_" in key:
            stray.append(key)
    problems = [f"unexpected adapter tensor {key}" for key in stray]
    problems += [f"cores for {module} which is not in target_shapes"
                 for module, _ in cores if module not in shapes]
    updates = {}
    for module, (out_f, in_f) in shapes.items():
        trains = {}
        for factor, d_in, d_out in (("A", in_f, cfg.r), ("B", cfg.r, out_f)):
            found = cores.get((module, factor), {})
            if sorted(found) != list(range(len(found))):
                problems.append(f"{module}.loretta_{factor} has cores {sorted(found)}, not 0..{len(found) - 1}")
            trains[factor] = [found[k] for k in sorted(found)]
            problems += _check_train(trains[factor], d_in, d_out, f"{module}.loretta_{factor}")
        updates[module] = RepUpdate(module, int(out_f), int(in_f), cfg.r, cfg.scaling, trains["A"], trains["B"])
    if problems:
        raise ValueError(f"the adapter file does not match its config: {'; '.join(problems[:5])}"
                         f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}; "
                         "re-save the adapter from the trained model")
    return updates


def norm_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained non-adapter tensors (norm weights), named as in the base checkpoint."""
    return {key: tensor for key, tensor in tensors.items() if "loretta_" not in key}
