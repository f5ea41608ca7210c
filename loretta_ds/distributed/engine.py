"""The DeepSpeed engine: ``deepspeed.initialize`` over the trainable parameters alone, the
optimizer's fp32 master partitions, the LR schedule's first step and DeepSpeed's log level.

Under ZeRO-3 the model reaches here already partitioned (zero3_params.Zero3LoadContext) with
LoRETTA injected; the optimizer is built over the trainable parameters only.
"""
from __future__ import annotations

import torch


def initialize(model: torch.nn.Module, ds_config: dict):
    """deepspeed.initialize over the trainable parameters only: frozen weights never get an
    optimizer state or a gradient buffer. Returns the engine."""
    import deepspeed

    from .startup_costs import avoid_startup_costs

    avoid_startup_costs(ds_config)
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
