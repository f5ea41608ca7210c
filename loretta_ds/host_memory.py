"""Host memory the C allocator keeps after torch frees it (glibc only; a no-op elsewhere).

glibc's malloc serves a large request with its own mmap and unmaps it on free, but only while the
request is above the mmap threshold, and that threshold is dynamic: each freed mmapped block
raises it to the block's size (up to 32 MiB on 64-bit). After the first activation buffers of a
training step are freed, every later buffer of that size comes from the heap instead, and memory
freed in the middle of the heap stays resident. On SmolLM2-135M (micro batch 16 x 64 tokens, one
process, float32) this held 300-460 MiB more at the peak than the tensors alive
(docs/benchmarks.md section 12), in the full-precision and the 4-bit run alike.

Fixing the threshold at glibc's initial value stops the drift: buffers of 128 KiB and more are
mapped and returned on free; smaller ones, the many small tensors, stay on the heap as before.
``malloc_trim`` returns what the heap holds free now (after a 4-bit load: the full-precision
weights read and quantized one by one).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial (and documented default) threshold


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
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version")):
        return None
    return libc


def fix_mmap_threshold() -> bool:
    """Keep large allocations mmapped (and returned on free) for the rest of the process. Returns
    whether it took effect."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)


def release_free_heap() -> bool:
    """Give the pages the heap holds free back to the system. Returns whether any were released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
