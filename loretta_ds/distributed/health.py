"""Which ranks are still there: a heartbeat per rank through the process group's store.

A collective that loses a rank fails on the survivors, either at once (the dead process's sockets
close: "Connection reset by peer") or after the collective timeout (--dist_timeout) when the rank
hangs or its node vanished. Neither error says which rank is gone. Every rank therefore bumps a
counter in the rendezvous store (the TCP store on MASTER_ADDR that the process group already
uses) once a second from a daemon thread; after a failed collective, a survivor reads all
counters twice a few seconds apart, and the ranks whose counters stood still are the lost ones.
A rank blocked inside a collective still beats (the wait releases the GIL), so only dead, frozen
or cut-off ranks are named. A survivor marks itself in the store before it checks: it ends after
its check, and a survivor whose collective failed only because that one's sockets closed must not
count it among the lost. Rank 0 hosts the store: when rank 0 is dead or frozen, the store does not
answer, and that names rank 0, unless this rank saw rank 0's survivor mark during its check: then
rank 0 ended after its own check (it reports), which is why the store went away.

Each rank also publishes its node's name in the store at start, and every rank keeps the table, so
a lost rank is named with its node even when the store went down with rank 0; ranks lost together
with every other rank of their node point at the node (down, unreachable, or all its processes
killed) rather than at one process.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import torch.distributed as dist

PREFIX = "loretta_ds/heartbeat/"
HOST_PREFIX = "loretta_ds/host/"
# Set by a rank that saw a collective fail and is checking who is gone: it is not lost itself. It
# ends right after its check, so its heartbeat stops; a rank whose collective fails later (because
# that rank's sockets closed when it ended) would otherwise count it among the lost.
SURVIVOR_PREFIX = "loretta_ds/survivor/"
INTERVAL_S = 1.0
# A rank counts as lost when its counter does not move for this long (several beats, so a
# healthy rank starved of CPU for a moment is not taken for a lost one).
SILENCE_S = 5.0
# The store answers in milliseconds; one that has not answered after this long is not there.
STORE_PATIENCE_S = 10.0


def node_name() -> str:
    """The name of this rank's node: SLURM's node name inside a SLURM step (what scontrol and
    squeue call it), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class LostRanks(list):
    """The lost ranks (a list of rank numbers) and ``hosts``: the node of every rank known."""

    def __init__(self, ranks=(), hosts: dict[int, str] | None = None):
        super().__init__(ranks)
        self.hosts = dict(hosts or {})


class Heartbeat:
    """Beats from a daemon thread once started (after the process group is up); ``lost_ranks()``
    names the silent ranks after a failed collective."""

    def __init__(self, interval_s: float = INTERVAL_S):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.interval_s = interval_s
        self._store = dist.distributed_c10d._get_default_store()  # the process group's own store
        self._store.set(f"{HOST_PREFIX}{self.rank}", node_name())
        self.hosts: dict[int, str] = {self.rank: node_name()}  # filled by the beating thread
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="loretta-heartbeat", daemon=True)
        self._thread.start()

    def _collect_hosts(self) -> None:
        # check() does not block: a rank that has not published yet is asked again next beat.
        for rank in range(self.world_size):
            key = f"{HOST_PREFIX}{rank}"
            if rank not in self.hosts and self._store.check([key]):
                self.hosts[rank] = self._store.get(key).decode(errors="replace")

    def _beat(self) -> None:
        key = f"{PREFIX}{self.rank}"
        while not self._stopped.is_set():
            try:
                self._store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store is gone with rank 0; lost_ranks() reports it
                return
            if len(self.hosts) < self.world_size:
                try:
                    self._collect_hosts()
                except Exception:  # noqa: BLE001 - only the message's node names; the beat goes on
                    pass
            self._stopped.wait(self.interval_s)

    def _counters(self) -> list[int]:
        return [self._store.add(f"{PREFIX}{rank}", 0) for rank in range(self.world_size)]

    def lost_ranks(self, silence_s: float = SILENCE_S) -> LostRanks:
        """Ranks other than this one whose heartbeat stood still for ``silence_s`` and that did not
        check for lost ranks themselves (those saw the failure: they are survivors that ended), with
        the nodes of the ranks (``.hosts``); blocks about that long. A store that does not answer within
        STORE_PATIENCE_S more (rank 0's process is dead or frozen: a frozen store can hold a request
        forever) names rank 0."""
        found: list[list[int]] = []
        survivors: set[int] = set()  # ranks seen checking too, kept if the store goes away meanwhile

        def note_survivors() -> None:
            survivors.update(r for r in range(self.world_size) if self._store.check([f"{SURVIVOR_PREFIX}{r}"]))

        def compare() -> None:
            try:
                self._store.set(f"{SURVIVOR_PREFIX}{self.rank}", "1")
                before = self._counters()
                deadline = time.monotonic() + silence_s
                while (left := deadline - time.monotonic()) > 0:
                    note_survivors()
                    time.sleep(min(INTERVAL_S, left))
                after = self._counters()
                note_survivors()
            except Exception:  # noqa: BLE001 - the store's host is gone: reported below
                return
            found.append([r for r in range(self.world_size)
                          if r != self.rank and after[r] == before[r] and r not in survivors])

        reader = threading.Thread(target=compare, name="loretta-heartbeat-check", daemon=True)
        reader.start()
        reader.join(silence_s + STORE_PATIENCE_S)
        if found:
            return LostRanks(found[0], self.hosts)
        if 0 in survivors:
            # Rank 0 was checking too and the store went with it when it ended after its own check
            # (it reports the lost ranks): not a lost rank, and this check found none for certain.
            return LostRanks([], self.hosts)
        return LostRanks([0] if self.rank != 0 else [], self.hosts)

    def stop(self, timeout_s: float = 2 * INTERVAL_S) -> None:
        """Stop beating and wait (briefly) for the thread: no thread of ours may still be inside a
        store call when the process group is destroyed and the process exits (a C++ thread torn
        down mid-call aborts the process: "terminate called without an active exception")."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


def start_heartbeat() -> Heartbeat | None:
    """A heartbeat for this rank, or None for a single process (or a process group without a store)."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    try:
        return Heartbeat()
    except (AttributeError, RuntimeError):  # a torch without the default-store accessor
        return None


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _nodes_lost_whole(lost: list[int], hosts: dict[int, str], world_size: int) -> set[str]:
    """Nodes all of whose ranks (two or more) are lost; only known when the table holds every rank."""
    if len(hosts) != world_size:
        return set()
    return {host for host in {hosts[r] for r in lost if r in hosts}
            if sum(name == host for name in hosts.values()) > 1
            and all(r in lost for r, name in hosts.items() if name == host)}


def _where(lost: list[int], hosts: dict[int, str], whole: set[str]) -> str:
    """' on node2 (all of its ranks)', or per node when the lost ranks span several; '' when the
    node of a lost rank is unknown."""
    if any(rank not in hosts for rank in lost):
        return ""
    by_host: dict[str, list[int]] = {}
    for rank in lost:
        by_host.setdefault(hosts[rank], []).append(rank)
    if len(by_host) == 1:
        (host,) = by_host
        return f" on {host}" + (" (all of its ranks)" if host in whole else "")
    return " (" + "; ".join(f"{_ranks(ranks)} on {host}" + (", all of its ranks" if host in whole else "")
                            for host, ranks in by_host.items()) + ")"


def describe_lost_rank(err: BaseException, lost: list[int], world_size: int, step: int, dist_timeout: float,
                       newest_checkpoint: Path | None, hosts: dict[int, str] | None = None) -> str:
    """The message for a failed collective: who is gone (the ranks whose heartbeat stopped,
    ``lost``) and on which node (``hosts``: rank -> node; by default the table that came with
    ``lost`` from Heartbeat.lost_ranks), what failed, and how to continue."""
    if hosts is None:
        hosts = getattr(lost, "hosts", {})
    if lost:
        whole = _nodes_lost_whole(lost, hosts, world_size)
        who = f"{_ranks(lost)} of {world_size}{_where(lost, hosts, whole)}"
        cause = ("the node is down or unreachable, or every process on it died" if whole else
                 "the process died or hangs, or its node is unreachable")
        why = f"{'they' if len(lost) > 1 else 'it'} stopped answering (no heartbeat for {SILENCE_S:.0f} s): {cause}"
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
