"""The process group and what it rests on: the launcher's world (rank, local rank, size), the
rendezvous port, joining the group (gloo on CPU, nccl on GPUs) with a timeout, each rank's share of
the CPU threads, and the collectives the trainer uses (barrier, flags and sums over ranks).
"""
from __future__ import annotations

import errno
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import RendezvousPortInUse
from .op_cache import use_environment_extension_cache


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_alone() -> bool:
    """True for ``python launch/train.py`` without a launcher (no RANK / WORLD_SIZE set)."""
    return "RANK" not in os.environ and "WORLD_SIZE" not in os.environ


def world_from_environment() -> tuple[int, int, int]:
    """(rank, local rank, world size) as the launcher (deepspeed, srun helper, or none) set them."""
    if launched_alone():
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])


def cuda_available() -> bool:
    return torch.cuda.is_available()


def share_cpu_threads() -> int:
    """Without OMP_NUM_THREADS, give each local rank its share of this machine's cores.

    torch would otherwise start one thread per core in every rank: N ranks on N cores then run
    N * N threads that preempt each other (and the launcher sets the variable only when binding
    cores). Returns the thread count in use.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, local)))
    return torch.get_num_threads()


def port_in_use_message(port: str) -> str:
    return (f"the rendezvous port {port} (MASTER_PORT) is already in use on this node by another process, "
            "often another job's run on the default port 29500: launch with a free port "
            f"(deepspeed --master_port PORT ...; srun / slurm/_launch.sh: MASTER_PORT=PORT); nothing was "
            "written")


def check_rendezvous_port() -> None:
    """On the rank that hosts the rendezvous (rank 0 listens on MASTER_PORT), fail at once when the
    port is taken: torch's store would fail only after the run's plan is built, with a message about
    sockets that reads like a network fault (and the other ranks would wait for it)."""
    if launched_alone() or os.environ.get("RANK") != "0" or not os.environ.get("MASTER_PORT", "").isdigit():
        return
    port = os.environ["MASTER_PORT"]
    with socket.socket() as probe:
        # The store's own socket reuses addresses too: a port in TIME_WAIT is free for it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", int(port)))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise RendezvousPortInUse(port_in_use_message(port)) from None
            raise


def _is_port_in_use(err: BaseException) -> bool:
    text = str(err)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def init_distributed(timeout_s: int) -> None:
    """Join the process group; every collective fails after ``timeout_s`` seconds instead of
    waiting forever for a rank that died (gloo on CPU, nccl on GPUs)."""
    use_environment_extension_cache()  # the CPU all-reduce op is built here on a first run
    import deepspeed

    if launched_alone():
        # A world of one on this host, on a free port (no clash with other jobs on the machine).
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    share_cpu_threads()
    if cuda_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        deepspeed.init_distributed(dist_backend="nccl" if cuda_available() else "gloo",
                                   auto_mpi_discovery=False, timeout=timedelta(seconds=timeout_s),
                                   verbose=False)
    except RuntimeError as err:
        # Taken between check_rendezvous_port and now: the same message, not a lost rank.
        if _is_port_in_use(err):
            raise RendezvousPortInUse(port_in_use_message(os.environ.get("MASTER_PORT", "?"))) from None
        raise
    release_shared_memory_name()


# DeepSpeed's CPU all-reduce puts a shared-memory segment per rank in /dev/shm, named after the
# user, MASTER_ADDR, MASTER_PORT and rank (ops/csrc/cpu/comm/shm.cpp), and never unlinks it: every
# CPU run left about 66 MB per rank behind, until /dev/shm and with it the machine's memory filled.
SHM_SEGMENT = "deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


def release_shared_memory_name() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce segment name once every rank has mapped it.

    The mappings stay valid until the processes exit, so all-reduce works as before; the memory is
    returned when the last process holding it ends, also after a kill -9. The barrier first makes
    sure no rank is still waiting to open the segment by its name.
    """
    if cuda_available() or not dist.is_initialized():
        return
    path = Path("/dev/shm") / SHM_SEGMENT.format(uid=os.getuid(), addr=os.environ.get("MASTER_ADDR", ""),
                                                  port=os.environ.get("MASTER_PORT", ""), rank=dist.get_rank())
    if dist.get_world_size() > 1:
        dist.barrier()
    try:
        path.unlink()
    except FileNotFoundError:  # not created (another all-reduce path, or a remote rank)
        pass


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from a collective whose peers are gone or silent (not a bug here)."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return any(sign in text for sign in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset",
                                         "Broken pipe", "Timed out", "timed out", "Socket Timeout",
                                         "Application timeout", "pair closure"))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    if cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (a collective: every rank must call it)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def flags_on_any_rank(*flags: bool) -> list[bool]:
    """``any_rank`` for several flags in one collective."""
    value = torch.tensor([1.0 if f else 0.0 for f in flags], device=device())
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in value.tolist()]


def sum_over_ranks(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device())
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()
