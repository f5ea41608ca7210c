"""Peak memory of one training step, above the memory held just before it.

CUDA: the caching allocator's own counters (``max_memory_allocated`` after a reset).

CPU, tensors (the table's figure): tracemalloc does not see torch's allocations, so the step runs
under torch.profiler with profile_memory=True and its memory timeline (every tensor allocation and
free, in order) gives the peak of live tensor bytes above the start of the step: the same quantity
CUDA's max_memory_allocated measures, so CPU and GPU figures compare.

CPU, resident set (reported beside it): what the process really holds, allocator included.
Before the step, glibc is told to hand every block of 64 KiB or more straight back to the OS
(mallopt M_MMAP_THRESHOLD, which also stops glibc raising that threshold by itself) and to return
its cached free memory (malloc_trim); then the kernel's high-water mark (VmHWM) is reset through
/proc/self/clear_refs. VmHWM after the step minus VmRSS before it is the step's peak: activations
kept for backward, gradients, optimizer temporaries. Without the mallopt/trim, memory freed by an
earlier step would be reused without ever showing up as growth. Where /proc or glibc is missing,
a thread samples psutil's RSS every millisecond instead (less exact: it can miss short peaks).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import time
from typing import Callable

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field: str) -> int:
    with open(_PROC_STATUS) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in {_PROC_STATUS}")


class CudaPeakMeter:
    method = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before the step"

    def __init__(self, device: torch.device):
        self.device = device

    def measure(self, step: Callable[[], None]) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        step()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - before


class ProcPeakMeter:
    method = ("Linux VmHWM (reset via /proc/self/clear_refs) minus VmRSS before the step, with glibc "
              "mallopt(M_MMAP_THRESHOLD=64KiB) and malloc_trim(0) so freed memory is not hidden in malloc's cache")

    def __init__(self):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Fixed threshold: blocks >= 64 KiB are mmap'ed and unmapped on free, so reuse is visible.
        self.libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        self.libc.mallopt(_M_TRIM_THRESHOLD, 0)

    @staticmethod
    def available() -> bool:
        if not (os.path.exists(_PROC_STATUS) and os.access(_CLEAR_REFS, os.W_OK)):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            return hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")
        except OSError:
            return False

    def measure(self, step: Callable[[], None]) -> int:
        gc.collect()
        self.libc.malloc_trim(0)
        before = _status_kib("VmRSS")
        with open(_CLEAR_REFS, "w") as refs:
            refs.write("5")  # 5 = reset the peak RSS to the current RSS
        step()
        return (_status_kib("VmHWM") - before) * 1024


class SampledPeakMeter:
    method = "psutil RSS sampled every 1 ms during the step, minus RSS before it"

    def __init__(self):
        import psutil
        self.process = psutil.Process()

    def measure(self, step: Callable[[], None]) -> int:
        gc.collect()
        before = self.process.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], self.process.memory_info().rss)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            step()
        finally:
            done.set()
            sampler.join()
        peak[0] = max(peak[0], self.process.memory_info().rss)
        return peak[0] - before


@contextlib.contextmanager
def _native_stderr_silenced():
    """Kineto writes two log lines per profiling session straight to fd 2; keep them out of the
    output. Python exceptions still propagate (and print after fd 2 is restored)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ProfilerPeakMeter:
    method = ("torch.profiler memory timeline (profile_memory=True): peak of live tensor bytes during the "
              "step above those live at its start (allocator overhead not included)")

    @staticmethod
    def available() -> bool:
        try:
            from torch.profiler._memory_profiler import Action, MemoryProfile  # noqa: F401
            return True
        except ImportError:
            return False

    def measure(self, step: Callable[[], None]) -> int:
        from torch.profiler import ProfilerActivity, profile

        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        return profiler_peak(prof)


def profiler_peak(prof) -> int:
    """Peak live tensor bytes in a torch.profiler run (profile_memory=True) above its start."""
    from torch.profiler._memory_profiler import Action, MemoryProfile

    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def saved_tensor_bytes(model: torch.nn.Module, run: Callable[[], object]) -> int:
    """Bytes autograd keeps for backward while ``run()`` runs ``model``'s forward (unique storages,
    the model's parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(saved.values())


def rss_meter():
    """The process resident-set meter: exact high-water mark on Linux, sampling elsewhere."""
    return ProcPeakMeter() if ProcPeakMeter.available() else SampledPeakMeter()


def peak_meter(device: torch.device):
    """The tensor-level meter for ``device`` (the figure the table shows)."""
    if device.type == "cuda":
        return CudaPeakMeter(device)
    if ProfilerPeakMeter.available():
        return ProfilerPeakMeter()
    return rss_meter()
