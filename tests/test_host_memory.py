"""loretta_ds.host_memory: the heap's free pages leave the process (glibc), in a fresh interpreter
(the allocator's state is per process)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loretta_ds.host_memory import _libc

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(_libc() is None, reason="the C library is not glibc")

# What a training step does to the allocator: one large buffer freed (glibc then raises its mmap
# threshold to that size), then many buffers of a few MiB alive at once and freed while a small
# allocation made after them stays alive (it pins the heap's top, so trimming the top cannot help).
SCENARIO = textwrap.dedent("""
    import ctypes, json, sys
    from loretta_ds import host_memory

    def anon_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    MiB = 1 << 20
    first = libc.malloc(8 * MiB); ctypes.memset(first, 1, 8 * MiB); libc.free(first)
    blocks = [libc.malloc(4 * MiB) for _ in range(50)]
    for block in blocks:
        ctypes.memset(block, 1, 4 * MiB)
    pin = libc.malloc(MiB); ctypes.memset(pin, 1, MiB)  # no free chunk is this large: from the top
    before = anon_mib()
    for block in blocks:
        libc.free(block)
    after_free = anon_mib()
    trimmed = host_memory.release_free_heap()
    print(json.dumps({"before": before, "after_free": after_free, "after_trim": anon_mib(), "trimmed": trimmed}))
""")


def run() -> dict:
    out = subprocess.run([sys.executable, "-c", SCENARIO], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def test_trimming_returns_the_free_heap_the_allocator_kept():
    kept = run()
    # The 200 MiB freed stay resident (served from the heap, under a pinned top)...
    assert kept["before"] - kept["after_free"] < 50, kept
    # ...until malloc_trim hands the free pages back.
    assert kept["trimmed"] and kept["before"] - kept["after_trim"] > 150, kept
