"""ZeRO-3 parameter handling: the HfDeepSpeedConfig that makes ``from_pretrained`` load each rank's
partition only, gathering partitioned parameters, and keeping the trainable ones whole.

The trainable tensors (TT cores, norms) are small and kept whole on every rank (ZeRO-3
"persistent"); the frozen base weights stay partitioned and are gathered only where needed.
Without ZeRO-3 every function here does nothing or passes through.
"""
from __future__ import annotations

import contextlib

import torch


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
