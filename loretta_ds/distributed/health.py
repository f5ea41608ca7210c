"""Which ranks are still there: a heartbeat per rank through the process group's store.

A collective that loses a rank fails on the survivors, either at once (the dead process's sockets
close: "Connection reset by peer") or after the collective timeout (--dist_timeout) when the rank
hangs or its node vanished. Neither error says which rank is gone. Every rank therefore bumps a
counter in the rendezvous store (the TCP store on MASTER_ADDR that the process group already
uses) once a second from a daemon thread; after a failed collective, a survivor reads all
counters twice a few seconds apart, and the ranks whose counters stood still are the lost ones.
A rank blocked inside a collective still beats (the wait releases the GIL), so only dead, frozen
or cut-off ranks are named. Rank 0 hosts the store: when rank 0 is dead or frozen, the store does
not answer, and that names rank 0.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import torch.distributed as dist

PREFIX = "loretta_ds/heartbeat/"
INTERVAL_S = 1.0
# A rank counts as lost when its counter does not move for this long (several beats, so a
# healthy rank starved of CPU for a moment is not taken for a lost one).
SILENCE_S = 5.0
# The store answers in milliseconds; one that has not answered after this long is not there.
STORE_PATIENCE_S = 10.0


class Heartbeat:
    """Beats from a daemon thread once started (after the process group is up); ``lost_ranks()``
    names the silent ranks after a failed collective."""

    def __init__(self, interval_s: float = INTERVAL_S):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.interval_s = interval_s
        self._store = dist.distributed_c10d._get_default_store()  # the process group's own store
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="loretta-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        key = f"{PREFIX}{self.rank}"
        while not self._stopped.is_set():
            try:
                self._store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store is gone with rank 0; lost_ranks() reports it
                return
            self._stopped.wait(self.interval_s)

    def _counters(self) -> list[int]:
        return [self._store.add(f"{PREFIX}{rank}", 0) for rank in range(self.world_size)]

    def lost_ranks(self, silence_s: float = SILENCE_S) -> list[int]:
        """Ranks other than this one whose heartbeat stood still for ``silence_s``; blocks about that
        long. A store that does not answer within STORE_PATIENCE_S more (rank 0's process is dead or
        frozen: a frozen store can hold a request forever) names rank 0."""
        found: list[list[int]] = []

        def compare() -> None:
            try:
                before = self._counters()
                time.sleep(silence_s)
                after = self._counters()
            except Exception:  # noqa: BLE001 - the store's host is gone: reported below
                return
            found.append([r for r in range(self.world_size) if r != self.rank and after[r] == before[r]])

        reader = threading.Thread(target=compare, name="loretta-heartbeat-check", daemon=True)
        reader.start()
        reader.join(silence_s + STORE_PATIENCE_S)
        if found:
            return found[0]
        return [0] if self.rank != 0 else []

    def stop(self) -> None:
        self._stopped.set()


def start_heartbeat() -> Heartbeat | None:
    """A heartbeat for this rank, or None for a single process (or a process group without a store)."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    try:
        return Heartbeat()
    except (AttributeError, RuntimeError):  # a torch without the default-store accessor
        return None


def describe_lost_rank(err: BaseException, lost: list[int], world_size: int, step: int, dist_timeout: float,
                       newest_checkpoint: Path | None) -> str:
    """The message for a failed collective: who is gone (the ranks whose heartbeat stopped,
    ``lost``), what failed, and how to continue."""
    if lost:
        who = f"rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {world_size}"
        why = (f"{'they' if len(lost) > 1 else 'it'} stopped answering (no heartbeat for {SILENCE_S:.0f} s): "
               "the process died or hangs, or its node is unreachable")
    else:
        who = "another rank"
        why = (f"every rank still answers, so one was slower than --dist_timeout {dist_timeout} s "
               "or the network between them failed")
    # gloo's first line: "[.../pair.cc:537] Read error [10.0.0.2]:4711: Connection reset by peer. This is..."
    reason = re.sub(r"^\[[^\]]+:\d+\]\s*", "", (str(err).strip().splitlines() or [""])[0])
    reason = reason.split(". ")[0][:300] or type(err).__name__
    resume = (f"The newest complete checkpoint is {newest_checkpoint}; relaunch with --resume auto to continue "
              "from it" if newest_checkpoint else
              "No checkpoint was written yet; relaunch with --resume auto to start again")
    return (f"lost contact with {who} at step {step}: {why} ({reason}). {resume} (a collective waits "
            f"--dist_timeout {dist_timeout} s for a silent rank).")
