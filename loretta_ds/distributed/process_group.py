"""Process group, ZeRO-3-aware model loading context, deepspeed.initialize and the parameter report.

Under ZeRO-3 the DeepSpeed config is registered with transformers (HfDeepSpeedConfig) before
``from_pretrained``, so each rank materializes only its partition of every base weight; LoRETTA
is injected into that partitioned model, and ``deepspeed.initialize`` builds the optimizer over the
trainable parameters alone. The trainable tensors (TT cores, norms) are small and kept whole on
every rank (ZeRO-3 "persistent"); the report below proves it and counts the rest.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import RendezvousPortInUse


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


def use_environment_extension_cache() -> Path:
    """Keep DeepSpeed's JIT-built ops (CPU Adam, the CPU all-reduce) in a cache of this Python
    environment, unless TORCH_EXTENSIONS_DIR says otherwise.

    torch's default cache (~/.cache/torch_extensions/py311_cpu) is shared by every environment,
    but an op's build is keyed to the DeepSpeed sources it was compiled from: two venvs then
    rebuild it in turn, minutes each time. Called before deepspeed loads any op; every rank of
    an environment computes the same directory.
    """
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        tag = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
        version = f"py{sys.version_info.major}{sys.version_info.minor}"
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCH_EXTENSIONS_DIR"] = str(root / "loretta_ds" / "torch_extensions" / f"{version}-{tag}")
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def pending_cpu_adam_build(ds_config: dict) -> str | None:
    """What to tell the user before DeepSpeed compiles its CPU Adam op (an optimizer offloaded to
    the CPU, first run in this environment): otherwise the run is silent for minutes."""
    offload = (ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
    if offload != "cpu":
        return None
    cache = use_environment_extension_cache()
    if any(cache.glob("cpu_adam*/cpu_adam*.so")):
        return None
    return (f"building DeepSpeed's CPU Adam op (first run in this Python environment only; about 1-2 minutes "
            f"on 2 idle cores, longer on a busy machine) into {cache}")


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


def begin_lr_schedule(scheduler) -> None:
    """Advance a fresh LR scheduler to its first step's value.

    DeepSpeed's warmup schedulers report a ratio of 0 until their first ``step()``, and the engine
    steps the scheduler after the optimizer: a fresh run's first update would run at lr 0 (with a
    2-step warmup, the first of 2 wasted). One step here makes the first update use the warmup's
    start value. A resumed run restores the scheduler's own position instead.
    """
    if scheduler is not None:
        scheduler.step()


def quiet_deepspeed(verbose: bool) -> None:
    """DeepSpeed logs every init detail and per-step warnings on every rank; the trainer reports
    what matters itself (skipped steps included). ``verbose`` keeps DeepSpeed's INFO log."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.INFO if verbose else logging.ERROR)


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


class Zero3LoadContext:
    """Keeps transformers' HfDeepSpeedConfig alive for the whole run when ZeRO-3 is on.

    transformers holds it by weak reference: while this object lives, ``from_pretrained`` creates
    every weight inside ``deepspeed.zero.Init`` (each rank allocates and loads its partition only)
    and the rest of transformers knows that weights are partitioned. Without ZeRO-3 it does nothing.
    """

    def __init__(self, ds_config: dict, zero3: bool):
        self._hf_config = None
        if zero3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_config = HfDeepSpeedConfig(ds_config)

    @property
    def active(self) -> bool:
        return self._hf_config is not None


def gathered(params: list[torch.nn.Parameter], zero3: bool, modifier_rank: int | None = None):
    """Context in which ZeRO-3 parameters are whole on every rank (entered by every rank)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank, enabled=zero3)


def initialize(model: torch.nn.Module, ds_config: dict):
    """deepspeed.initialize over the trainable parameters only: frozen weights never get an
    optimizer state or a gradient buffer. Returns the engine."""
    import deepspeed

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters; check --target_modules and --train_norms")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    return engine


def fp32_master_partitions(engine) -> list[torch.Tensor]:
    """This rank's flat fp32 master partitions: the tensors the optimizer updates and keys its
    state by (ZeRO-3 swaps them into its param groups only during a step; ZeRO-1/2 keep one per
    group there; without ZeRO the parameters themselves)."""
    zero = engine.optimizer
    for attribute in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):
        partitions = getattr(zero, attribute, None)
        if partitions:
            return list(partitions)
    basic = getattr(zero, "optimizer", zero)
    return [p for group in basic.param_groups for p in group["params"]]


def is_zero3_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_numel(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", param.numel()))


def make_trainable_whole(model: torch.nn.Module) -> None:
    """Fetch the persistent trainable parameters now, as ZeRO-3 would at the first forward.

    Persistent parameters are never released once fetched, so from here on each rank holds every
    trainable tensor whole: checks, a step-0 checkpoint and save_adapter can read them directly.
    """
    trainable = [p for p in model.parameters() if p.requires_grad and is_zero3_param(p)]
    if trainable:
        trainable[0].all_gather(param_list=trainable)


def regather_persistent(model: torch.nn.Module) -> None:
    """Make ZeRO-3's persistent parameters whole again where something released them.

    A ZeRO-3 step releases every parameter, persistent ones included, and gathers the persistent
    ones back at its end; when it skips the update (non-finite gradients) it returns before that,
    and the next forward finds them released, which breaks DeepSpeed's prefetch trace. A
    collective: call it on every rank (all ranks skip the same steps).
    """
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    released = [p for p in model.parameters()
                if getattr(p, "ds_persist", False) and p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if released:
        released[0].all_gather(param_list=released)


@contextlib.contextmanager
def untraced_forwards(engine):
    """Forwards before the first training step (the step-0 evaluation) that leave no trace behind
    in ZeRO-3's decisions of which weights to release.

    ZeRO-3 records the order in which modules fetch their weights during the first forward (and
    backward) it sees, uses that trace from the next forward on, and after each module releases the
    weights the trace does not reuse within stage3_max_reuse_distance. DeepSpeed 0.19 caches each
    of those decisions per (module, position in the trace) and never drops the cache when a new
    trace is recorded. The evaluation's first forward recorded a forward-only trace; its next
    forwards, and the first training step until its backward outran that trace, cached "release"
    for every weight (nothing reuses them in a forward-only trace), and every later training
    forward kept acting on those decisions: a fresh run released each weight after its forward
    use and gathered it again in backward, where a resumed run (no step-0 evaluation) kept the
    weights as configured, so memory and communication per step depended on whether the run had
    been resumed. Here ZeRO-3 forgets the trace after each of these forwards: every one records
    afresh (nothing is decided from a trace, nothing is cached), and the first training step
    records the full trace, as in a resumed run. No-op without ZeRO-3.
    """
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    coordinator = offload.get_param_coordinator() if offload is not None else None
    if coordinator is None or not hasattr(coordinator, "_invalidate_trace"):
        yield
        return

    def forget_trace(module, args, output):
        if not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()
    # Registered after DeepSpeed's own hooks: runs once ZeRO-3 has finished with the forward.
    handle = engine.module.register_forward_hook(forget_trace)
    try:
        yield
    finally:
        handle.remove()


def settle_parameters(engine, model: torch.nn.Module) -> None:
    """Wait for ZeRO-3 prefetches still in flight and release everything, then make the
    persistent (trainable) parameters whole again: a clean state for gathering frozen weights
    one by one and for saving. A collective."""
    if any(is_zero3_param(p) for p in model.parameters()):
        engine.empty_partition_cache()
        regather_persistent(model)


def parameter_report(model: torch.nn.Module) -> dict:
    """How every parameter is held on this rank: partitioned (ZeRO-3 slices) or persistent/whole,
    trainable or frozen; counts, element numbers and local bytes. Also checks that every trainable
    tensor is whole here (``trainable_all_whole``)."""
    report = {name: {"tensors": 0, "numel": 0, "local_bytes": 0}
              for name in ("partitioned", "persistent", "trainable", "frozen")}
    not_whole: list[str] = []
    for name, param in model.named_parameters():
        numel = full_numel(param)
        if is_zero3_param(param) and not getattr(param, "ds_persist", False):
            kind, local = "partitioned", param.ds_tensor.numel() * param.ds_tensor.element_size()
        else:
            kind, local = "persistent", numel * param.element_size()
        owner = "trainable" if param.requires_grad else "frozen"
        for key in (kind, owner):
            report[key]["tensors"] += 1
            report[key]["numel"] += numel
            report[key]["local_bytes"] += local
        if param.requires_grad and (kind == "partitioned" or tuple(param.shape) != tuple(getattr(param, "ds_shape", param.shape))):
            not_whole.append(name)
    frozen_partitioned = sum(1 for _, p in model.named_parameters()
                             if not p.requires_grad and is_zero3_param(p) and not getattr(p, "ds_persist", False))
    report["frozen_partitioned_tensors"] = frozen_partitioned
    report["trainable_not_whole"] = not_whole[:20]
    report["trainable_all_whole"] = not not_whole
    return report


def describe_report(report: dict) -> str:
    def part(key: str) -> str:
        return f"{report[key]['tensors']} tensors / {report[key]['numel']:,} params"

    return (f"parameters: partitioned {part('partitioned')}; persistent (whole on every rank) "
            f"{part('persistent')}; trainable {part('trainable')}; frozen {part('frozen')}")
