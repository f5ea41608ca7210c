"""TT factor matrix: a (d_in x d_out) matrix stored as a train of 3-D cores (r_{k-1}, n_k, r_k).

Layout and contraction follow the LoRETTA reference, so cores copied from it give the same matrix:
the cores are contracted left to right over their bond indices and the resulting vector of
d_in * d_out entries is read row-major as (d_in, d_out); the layer computes ``x @ M``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .contract import split_cores, tt_to_dense
from .shapes import core_shapes, modes_for, tt_numel


class TTFactorMatrix(nn.Module):
    """A trainable d_in x d_out matrix in tensor-train form.

    Args:
        d_in, d_out: the dense matrix shape (it multiplies inputs as ``x @ M``).
        tensor_rank: bond rank t (ranks are [1, t, ..., t, 1]).
        modes: TT modes; None picks them with ``shapes.modes_for`` (reference table or factorize).
        dtype, device: where the cores live (follow the wrapped layer; ``meta`` for counting).

    The cores live back to back in one flat parameter, ``tt_cores``; ``cores()`` gives them as
    views of their shapes. One tensor per matrix rather than one per core: under ZeRO-3 DeepSpeed
    does work per trainable tensor every step (a gradient hook and bucket copy in backward, CPU
    Adam bookkeeping, an all-gather of every updated persistent tensor after the step), which a
    4-6 core train would pay 4-6 times for a few hundred values; AdamW is elementwise, so the
    training maths is the same. It also keeps the adapter file's header small.

    ``forward()`` returns the dense (d_in, d_out) matrix; it is cheap (d_in * d_out values), and
    going through ``forward`` lets ZeRO-3's module hooks see the cores like any other parameter.
    """

    def __init__(self, d_in: int, d_out: int, tensor_rank: int, modes: list[int] | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.d_in, self.d_out, self.tensor_rank = int(d_in), int(d_out), int(tensor_rank)
        self.modes = modes_for(self.d_in, self.d_out, modes)
        self.core_shapes = core_shapes(self.modes, self.tensor_rank)
        self.tt_cores = nn.Parameter(torch.zeros(tt_numel(self.modes, self.tensor_rank), dtype=dtype, device=device))

    def extra_repr(self) -> str:
        return f"{self.d_in} x {self.d_out}, modes={self.modes}, tensor_rank={self.tensor_rank}"

    def cores(self) -> list[torch.Tensor]:
        """The cores (r_{k-1}, n_k, r_k) as views of ``tt_cores`` (writable, differentiable)."""
        return split_cores(self.tt_cores, self.core_shapes)

    def forward(self) -> torch.Tensor:
        flat = self.tt_cores
        if flat.dtype in (torch.bfloat16, torch.float16):
            # The chain's matmuls are tiny and odd-shaped (bond rank 5, modes 4-16): in half
            # precision cuBLAS runs them on slow legacy tensor-core kernels (about 85 us each on an
            # H200, 0.5 ms of GPU time per rep layer and step; docs/benchmarks.md section 5), in
            # fp32 on fast ones. fp32 is also the more exact sum; the result is cast back.
            return tt_to_dense(split_cores(flat.float(), self.core_shapes), self.d_in, self.d_out).to(flat.dtype)
        return tt_to_dense(self.cores(), self.d_in, self.d_out)

    @torch.no_grad()
    def reset_reference_(self, generator: torch.Generator | None = None) -> None:
        """The reference init: core_k = randn / sqrt(r_k) * sigma^(1/K), sigma = sqrt(1/(d_in+d_out)).

        The product of the K cores then has entries of standard deviation about sigma.
        """
        sigma = math.sqrt(1.0 / (self.d_in + self.d_out))
        per_core = sigma ** (1.0 / len(self.core_shapes))
        for core in self.cores():
            sample = torch.randn(core.shape, generator=generator, dtype=torch.float32)
            core.copy_(sample / math.sqrt(core.shape[2]) * per_core)

    @torch.no_grad()
    def zero_last_core_(self) -> None:
        """Make the matrix exactly zero while the other cores keep their random values.

        Only one core is zero, so the first step gives it a gradient, and the step after that
        reaches every other core (a train with two zero cores would never move).
        """
        self.cores()[-1].zero_()
