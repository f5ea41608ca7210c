"""The training objective: the summed next-token cross-entropy over a batch's targets, and the
factor that makes a step's gradient that of the mean over every target token of the global batch.
Training and evaluation compute their loss with the same function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.batches import model_inputs, target_count
from .data.formats import IGNORE_INDEX
from .distributed import engine as dist


def token_loss_sum(model, batch: dict[str, torch.Tensor], device) -> torch.Tensor:
    """Summed next-token cross-entropy of a training batch (padded or packed) over its targets."""
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    if "attention_mask" not in inputs:
        # Packed rows: without a cache transformers masks attention by the position_ids' sequences.
        inputs["use_cache"] = False
    logits = model(**inputs).logits
    targets = batch["labels"][:, 1:].to(device)
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def global_loss_scale(micro_batches: list[dict], grad_accum: int, world_size: int) -> tuple[float, int]:
    """(factor for each micro batch's summed loss, target tokens of the global batch).

    DeepSpeed divides each loss by grad_accum and averages the gradients over the ranks; with
    this factor the step's gradient is that of the mean loss over every target token of the
    global batch, however its tokens fall into rows, micro batches and ranks (packed and padded
    runs optimize the same objective). One all-reduce of a count per step.
    """
    (targets,) = dist.sum_over_ranks([sum(target_count(b) for b in micro_batches)])
    targets = max(int(targets), 1)
    return grad_accum * world_size / targets, targets
