"""TT mode shapes: which modes n_1..n_K a (d_in x d_out) factor matrix is folded into.

The modes of a factor matrix multiply to d_in * d_out. For the sizes the LoRETTA paper used we
take the reference table (so parameter counts equal the paper's); every other size is factorized
here, which is what makes LLaMA-2's MLP widths (11008 = 2^8 * 43, 13824, 28672) and odd sizes work.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

_TABLE_PATH = Path(__file__).with_name("reference_shapes.json")

# A mode around this size balances core count (sequential contractions) against core size.
_TARGET_MODE_SIZE = 10.0


@lru_cache(maxsize=1)
def _reference_table() -> dict[int, dict[int, list[int]]]:
    """The reference table with its inconsistent entries (product != d * k) dropped."""
    raw = json.loads(_TABLE_PATH.read_text())
    table: dict[int, dict[int, list[int]]] = {}
    for k, row in raw["tt_shapes"].items():
        for d, modes in row.items():
            if math.prod(modes) == int(d) * int(k):
                table.setdefault(int(k), {})[int(d)] = list(modes)
    return table


def reference_modes(big: int, small: int) -> list[int] | None:
    """Modes the reference uses for a big x small (or small x big) factor, or None if it has none.

    The reference keys its table by (small = r or bottleneck, big = hidden size) and uses the same
    list for both orientations.
    """
    modes = _reference_table().get(small, {}).get(big)
    return list(modes) if modes is not None else None


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def factorize(size: int) -> list[int]:
    """Split ``size`` into TT modes whose product is exactly ``size``.

    The number of modes grows with log(size) so modes stay near ``_TARGET_MODE_SIZE``; prime
    factors are dealt largest-first into the currently smallest mode (balanced products). The two
    largest modes go to the ends of the train, where the bond rank is 1 and a large mode is cheap.
    A prime that is larger than the target stays one mode: it cannot be split.
    """
    if size < 1:
        raise ValueError(f"cannot factorize a matrix of {size} elements: sizes must be >= 1")
    primes = sorted(_prime_factors(size), reverse=True)
    if not primes:
        return [1]
    n_modes = max(1, min(len(primes), round(math.log(size) / math.log(_TARGET_MODE_SIZE))))
    modes = [1] * n_modes
    for p in primes:
        modes[modes.index(min(modes))] *= p
    modes.sort(reverse=True)
    # Largest first and last, the rest in the middle.
    if len(modes) >= 2:
        first, last, middle = modes[0], modes[1], modes[2:]
        modes = [first, *sorted(middle), last]
    return modes


def modes_for(d_in: int, d_out: int, override: list[int] | None = None) -> list[int]:
    """Modes of a d_in x d_out factor matrix: override, else the reference table, else factorize.

    Raises ValueError if an override does not multiply to d_in * d_out or has a mode < 1.
    """
    size = d_in * d_out
    if override is not None:
        modes = [int(m) for m in override]
        if not modes or any(m < 1 for m in modes):
            raise ValueError(f"TT modes {override} are invalid: every mode must be an integer >= 1")
        if math.prod(modes) != size:
            raise ValueError(
                f"TT modes {override} multiply to {math.prod(modes)}, but a {d_in} x {d_out} "
                f"factor needs a product of {size}; pick modes whose product is {size} "
                f"(for example {factorize(size)})"
            )
        return modes
    table_modes = reference_modes(max(d_in, d_out), min(d_in, d_out))
    return table_modes if table_modes is not None else factorize(size)


def useful_rank(modes: list[int]) -> int:
    """The largest bond rank a train of these modes can use: bond k joins the modes before it
    (product P) to those after it (product Q), and a rank above min(P, Q) there adds numbers but
    no capacity; above this maximum over the bonds, every bond is past that point and the train
    holds more numbers than the dense matrix it stands for."""
    return max((min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))), default=1)


def tt_ranks(n_modes: int, tensor_rank: int) -> list[int]:
    """Bond ranks [1, t, ..., t, 1] for a train of ``n_modes`` cores."""
    if tensor_rank < 1:
        raise ValueError(f"tensor_rank must be >= 1, got {tensor_rank}")
    return [1] + [tensor_rank] * (n_modes - 1) + [1]


def core_shapes(modes: list[int], tensor_rank: int) -> list[tuple[int, int, int]]:
    """Core k has shape (r_{k-1}, n_k, r_k)."""
    ranks = tt_ranks(len(modes), tensor_rank)
    return [(ranks[i], n, ranks[i + 1]) for i, n in enumerate(modes)]


def tt_numel(modes: list[int], tensor_rank: int) -> int:
    """Number of parameters in the cores of one TT factor matrix."""
    return sum(a * n * b for a, n, b in core_shapes(modes, tensor_rank))
