"""Batches for training and evaluation: seeded per-epoch shuffling, sharding across ranks with an
exact resumable position, and right-padding collation.

Order: epoch e uses permutation P_e = numpy default_rng([seed, e]).permutation(N). Global step b
takes P_e[b*G : (b+1)*G] with G = micro_batch_size * world_size, and rank r gets the r-th
micro-batch-sized chunk of it. So the ranks partition every step, the consumed examples are
always a prefix of P_e, and a position can be carried over to a different world size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .formats import IGNORE_INDEX


def collate(examples: Sequence[dict], pad_id: int, pad_to_multiple_of: int | None = None
            ) -> dict[str, torch.Tensor]:
    """Right-pad examples (input_ids, labels lists) into a batch.

    Returns input_ids [B, T] (pad_id in padding), attention_mask [B, T] (1 on real tokens) and
    labels [B, T] (IGNORE_INDEX in padding), int64; T is the longest example, rounded up to a
    multiple of pad_to_multiple_of if given.
    """
    longest = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# What a training batch hands the model; a packed batch also carries "real_tokens" (per row).
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs of a training batch (collate() or packing.collate_packed())."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def real_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a training batch."""
    return int(batch["real_tokens"].sum() if "real_tokens" in batch else batch["attention_mask"].sum())


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is computed on (the labels after the causal shift)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _rows(dataset, indices: Sequence[int]) -> list[dict]:
    # A `datasets.Dataset` returns columns for a list of indices; a list returns rows.
    if hasattr(dataset, "column_names"):
        columns = dataset[list(map(int, indices))]
        return [{"input_ids": i, "labels": l} for i, l in zip(columns["input_ids"], columns["labels"])]
    return [dataset[int(i)] for i in indices]


class ShardedBatches:
    """This rank's training micro-batches, epoch after epoch, resumable at an exact position.

    dataset: tokenized examples (input_ids, labels), a `datasets.Dataset` or a list of dicts.
    Each epoch has len(self) = N // (micro_batch_size * world_size) steps on every rank (the
    tail of the permutation that cannot fill a step on all ranks is skipped that epoch, so all
    ranks run the same number of steps). Iterating yields the rest of the current epoch, then
    moves the position to the start of the next; forever() chains epochs. The position
    (epoch, batch_index) advances as each batch is yielded, so state_dict() taken after
    training on k batches resumes at batch k+1.
    """

    def __init__(self, dataset, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, pad_id: int = 0, pad_to_multiple_of: int | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        per_step = micro_batch_size * world_size
        if len(dataset) < per_step:
            raise ValueError(
                f"the training set has {len(dataset)} examples, fewer than one step needs "
                f"(micro_batch_size {micro_batch_size} x world_size {world_size} = {per_step}); "
                f"lower the micro batch size or add data")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0
        self.batch_index = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Steps (micro-batches per rank) in one epoch."""
        return len(self.dataset) // (self.micro_batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of example indices used in `epoch` (same on every rank)."""
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def batch_indices(self, epoch: int, batch_index: int) -> list[int]:
        """Example indices of this rank's micro-batch `batch_index` in `epoch`."""
        start = (batch_index * self.world_size + self.rank) * self.micro_batch_size
        return self.epoch_order(epoch)[start:start + self.micro_batch_size].tolist()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.batch_index < len(self):
            indices = self.batch_indices(self.epoch, self.batch_index)
            self.batch_index += 1
            yield collate(_rows(self.dataset, indices), self.pad_id, self.pad_to_multiple_of)
        self.epoch += 1
        self.batch_index = 0

    def forever(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches across epochs without end (for step-budgeted training)."""
        while True:
            yield from self

    def state_dict(self) -> dict:
        """The position plus what it depends on, JSON-serialisable."""
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed,
                "num_examples": len(self.dataset), "micro_batch_size": self.micro_batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position.

        The data and seed must match the saved run (else the order differs: ValueError). A
        different micro_batch_size x world_size is accepted when the examples consumed in the
        epoch fill whole steps of the new size.
        """
        if state.get("packing_seq_len") and not hasattr(self, "seq_len"):
            raise ValueError(f"cannot resume the data position: the saved run packed its examples into rows "
                             f"of {state['packing_seq_len']} tokens; resume with --packing and "
                             f"--seq_len {state['packing_seq_len']}")
        if state["seed"] != self.seed or state["num_examples"] != len(self.dataset):
            raise ValueError(
                f"cannot resume the data position: it was saved for {state['num_examples']} "
                f"examples with seed {state['seed']}, this run has {len(self.dataset)} with seed "
                f"{self.seed}; resume with the same data, seq_len and seed")
        consumed = state["batch_index"] * state["micro_batch_size"] * state["world_size"]
        per_step = self.micro_batch_size * self.world_size
        if consumed % per_step:
            raise ValueError(
                f"cannot resume: {consumed} examples of epoch {state['epoch']} were consumed, "
                f"not a whole number of steps of {per_step} (micro_batch_size x world_size); "
                f"resume with micro_batch_size x world_size dividing {consumed}")
        self.epoch = int(state["epoch"])
        self.batch_index = consumed // per_step


def eval_batches(dataset, batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches in dataset order, this rank's share (examples i with i % world_size == rank).

    Every rank yields the same number of batches (ZeRO-3 ranks must run forward together): a
    rank short of examples gets filler rows whose labels are all IGNORE_INDEX, which add nothing
    to summed token losses. Same batch layout as collate().
    """
    own = list(range(rank, len(dataset), world_size))
    per_rank = -(-len(dataset) // world_size)
    for start in range(0, per_rank, batch_size):
        chunk = own[start:start + batch_size]
        wanted = min(batch_size, per_rank - start)
        rows = _rows(dataset, chunk) if chunk else []
        filler = {"input_ids": [pad_id], "labels": [IGNORE_INDEX]}
        rows += [filler] * (wanted - len(rows))
        yield collate(rows, pad_id)
