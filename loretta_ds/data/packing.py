"""Sample packing: tokenized examples concatenated into rows of exactly seq_len tokens, so no
compute is spent on padding.

Each example keeps its own positions (position_ids restart at 0 at its first token), and no
attention mask is passed: transformers then derives the sequence boundaries from the
position_ids, a block-diagonal causal mask for sdpa / eager and the varlen kernel for
flash_attention_2, so attention never crosses an example boundary. The first label of every
example is ignored, so no token is trained to predict the next example's first token (unpacked,
position 0 predicts nothing either). The slots left at a row's end are padding: pad_id,
ignored labels, and positions of their own so they form a separate sequence.

Rows of epoch e: the examples in the same seeded permutation as unpacked training (batches.py),
placed one by one into the open row with the least room that still fits them (best fit), then
the rows in a seeded order. So the rows are a pure function of (data, seq_len, seed, epoch), and
PackedBatches resumes at an exact row like ShardedBatches does at an exact example.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .batches import ShardedBatches, _rows
from .formats import IGNORE_INDEX


def pack_rows(lengths: Sequence[int], order: Sequence[int], seq_len: int) -> list[list[int]]:
    """Best-fit packing of examples (in `order`) into rows holding at most seq_len tokens.

    Returns rows of example indices, each row in placement order. Ties between rows with the
    same room go to the row opened first, so the result depends on nothing but the inputs.
    """
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free slots, row), sorted: best fit by bisection
    for index in order:
        length = int(lengths[index])
        if length > seq_len:
            raise ValueError(f"example {index} has {length} tokens, more than seq_len {seq_len}")
        at = bisect.bisect_left(room, (length, -1))
        if at < len(room):
            free, row = room.pop(at)
        else:
            free, row = seq_len, len(rows)
            rows.append([])
        rows[row].append(int(index))
        if free - length > 0:
            bisect.insort(room, (free - length, row))
    return rows


def collate_packed(rows: Sequence[Sequence[dict]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of examples (input_ids, labels lists) -> input_ids, position_ids, labels [B, seq_len].

    No attention_mask: the model must see the boundaries through position_ids (see the module
    docstring). real_token_count() counts the non-padding slots.
    """
    input_ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for r, examples in enumerate(rows):
        at = 0
        for example in examples:
            n = len(example["input_ids"])
            input_ids[r, at:at + n] = torch.tensor(example["input_ids"], dtype=torch.long)
            labels[r, at + 1:at + n] = torch.tensor(example["labels"][1:], dtype=torch.long)
            position_ids[r, at:at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(seq_len - at)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
            "real_tokens": torch.tensor([sum(len(e["input_ids"]) for e in examples) for examples in rows])}


class PackedBatches(ShardedBatches):
    """ShardedBatches over packed rows: micro-batches of micro_batch_size rows of seq_len tokens.

    Step b of epoch e takes rows R_e[b*G : (b+1)*G] (G = micro_batch_size * world_size) and rank
    r the r-th chunk, like ShardedBatches does with examples; an epoch has len(R_e) // G steps
    (the number of rows may differ by one or two between epochs). The position is
    (epoch, batch_index) as there; state_dict() records seq_len too.
    """

    def __init__(self, dataset, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, pad_id: int = 0, seq_len: int = 512):
        super().__init__(dataset, micro_batch_size, rank, world_size, seed, pad_id)
        self.seq_len = seq_len
        self.lengths = np.asarray(dataset["length"] if hasattr(dataset, "column_names")
                                  else [len(e["input_ids"]) for e in dataset])
        self._rows_epoch: int | None = None
        self._rows: list[list[int]] | None = None
        rows = len(self.epoch_rows(0))
        if rows < micro_batch_size * world_size:
            raise ValueError(
                f"the training set packs into {rows} rows of seq_len {seq_len}, fewer than one step "
                f"needs (micro_batch_size {micro_batch_size} x world_size {world_size}); lower the "
                f"micro batch size or seq_len, or add data")

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """The packed rows of `epoch` (example indices), in training order (same on every rank)."""
        if self._rows_epoch != epoch:
            rows = pack_rows(self.lengths, self.epoch_order(epoch), self.seq_len)
            shuffle = np.random.default_rng([self.seed, epoch, 1]).permutation(len(rows))
            self._rows = [rows[i] for i in shuffle]
            self._rows_epoch = epoch
        return self._rows

    def efficiency(self, epoch: int = 0) -> float:
        """Real tokens / slots over the rows of `epoch` that are trained on."""
        rows = self.epoch_rows(epoch)[:self.steps_in(epoch) * self.micro_batch_size * self.world_size]
        return sum(int(self.lengths[i]) for row in rows for i in row) / (len(rows) * self.seq_len)

    def steps_in(self, epoch: int) -> int:
        return len(self.epoch_rows(epoch)) // (self.micro_batch_size * self.world_size)

    def __len__(self) -> int:
        """Steps (micro-batches per rank) in the current epoch."""
        return self.steps_in(self.epoch)

    def batch_rows(self, epoch: int, batch_index: int) -> list[list[int]]:
        """This rank's rows (example indices) of micro-batch `batch_index` in `epoch`."""
        start = (batch_index * self.world_size + self.rank) * self.micro_batch_size
        return self.epoch_rows(epoch)[start:start + self.micro_batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.batch_index < len(self):
            rows = self.batch_rows(self.epoch, self.batch_index)
            self.batch_index += 1
            yield collate_packed([_rows(self.dataset, row) for row in rows], self.seq_len, self.pad_id)
        self.epoch += 1
        self.batch_index = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "packing_seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state.get("packing_seq_len") != self.seq_len:
            was = (f"packed into rows of {state['packing_seq_len']} tokens" if state.get("packing_seq_len")
                   else "not packed")
            raise ValueError(f"cannot resume the data position: the saved run was {was}, this run packs "
                             f"rows of {self.seq_len}; resume with the same --packing and --seq_len")
        super().load_state_dict(state)
