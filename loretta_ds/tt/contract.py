"""Contraction of a tensor train to its dense matrix, and the flat storage of its cores."""
from __future__ import annotations

import torch


def split_cores(flat: torch.Tensor, shapes: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Views of a 1-D tensor holding cores back to back, in order, each reshaped to (r_{k-1}, n_k, r_k).

    Views, not copies: gradients flow into ``flat``, and writes through a view change ``flat``.
    """
    sizes = [a * n * b for a, n, b in shapes]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"expected a 1-D tensor of {sum(sizes)} values for cores {shapes}, "
                         f"got shape {tuple(flat.shape)}")
    return [part.view(shape) for part, shape in zip(torch.split(flat, sizes), shapes)]


def tt_to_dense(cores: list[torch.Tensor], d_in: int, d_out: int) -> torch.Tensor:
    """Contract cores (r_{k-1}, n_k, r_k) left to right and read the result row-major as (d_in, d_out).

    Each step is one matmul: (prod(n_1..n_k), r_k) @ (r_k, n_{k+1} * r_{k+1}); the running product
    never holds more than d_in * d_out * t values.
    """
    result = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        rank_in, mode, rank_out = core.shape
        result = (result @ core.reshape(rank_in, mode * rank_out)).reshape(-1, rank_out)
    return result.reshape(d_in, d_out)
