"""Host memory the C allocator keeps after torch frees it (glibc only; a no-op elsewhere).

A 4-bit load reads each full-precision weight, quantizes it and frees it; glibc keeps the freed
blocks in its heap, resident, until something asks for them back. ``release_free_heap`` does
(``malloc_trim``: the heap's free pages go back to the system).

The larger effect is glibc's dynamic mmap threshold: each freed mmapped block raises the threshold
to its size (up to 32 MiB), so after a training step's first activation buffers are freed, later
ones come from the heap and memory freed in its middle stays resident: 300-460 MiB of SmolLM2-135M's
peak (docs/benchmarks.md section 12). Fixing the threshold (``MALLOC_MMAP_THRESHOLD_=131072`` in
the environment) returns it, but every buffer of 128 KiB or more is then mapped and faulted in
anew: forward + backward took 1.4-2x as long on this CPU, so the trainer leaves it to the user.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, or None where the C library is not glibc (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version")):
        return None
    return libc


def release_free_heap() -> bool:
    """Give the pages the heap holds free back to the system. Returns whether any were released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
