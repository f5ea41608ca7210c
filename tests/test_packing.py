"""Sample packing: rows of exactly seq_len tokens, attention kept inside each example (the packed
logits equal the logits of each example alone), the loss of the whole global batch the same
packed or padded, deterministic and resumable rows. A packed 2-process ZeRO-3 run preempted and
resumed to the same adapter is in tests/test_gradient_checkpointing.py (its runs are packed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from loretta_ds.data import (IGNORE_INDEX, PackedBatches, ShardedBatches, collate, collate_packed, pack_rows,
                             prepare_data, target_count)
from loretta_ds.loss import global_loss_scale, token_loss_sum
from tiny_models import tiny_llama_config


def examples(lengths, seed=0, vocab=128) -> list[dict]:
    """Token examples with a prompt-like ignored first label and answer labels after it."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(4, vocab, size=n).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 3) + ids[n // 3:], "length": n})
    return out


def model(attn: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config()
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


# --- rows ---------------------------------------------------------------------------------------------


def test_pack_rows_places_every_example_once_within_seq_len():
    lengths = np.random.default_rng(0).integers(1, 60, size=500)
    order = np.random.default_rng(1).permutation(500)
    rows = pack_rows(lengths, order, 64)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert rows == pack_rows(lengths, order, 64)
    # Best fit: within 10% of the fewest rows the tokens could fill.
    assert len(rows) <= 1.1 * lengths.sum() / 64 + 1


def test_collate_packed_restarts_positions_and_ignores_each_first_label():
    a = {"input_ids": [1, 5, 6], "labels": [5, 5, 6]}
    b = {"input_ids": [1, 9], "labels": [-100, 9]}
    batch = collate_packed([[a, b]], seq_len=8, pad_id=3)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 1, 9, 3, 3, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, 9, -100, -100, -100]]
    assert batch["real_tokens"].tolist() == [5] and "attention_mask" not in batch


# --- attention stays inside each example ------------------------------------------------------------


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy summed over the targets (the trainer's shift)."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX,
                                             reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_and_losses_equal_each_example_alone(attn):
    net = model(attn)
    parts = examples([7, 12, 3, 20], seed=1)
    batch = collate_packed([parts[:2], parts[2:]], seq_len=48, pad_id=0)
    alone_losses = []
    with torch.no_grad():
        # use_cache=False as in training: with a cache transformers would not look for packed rows.
        packed = net(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for row, members in enumerate([parts[:2], parts[2:]]):
            start = 0
            for example in members:
                n = len(example["input_ids"])
                alone = net(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
                assert (packed[row, start:start + n] - alone).abs().max().item() <= 1e-5
                # The example's loss, from its span of the packed row and its labels there.
                alone_loss = summed_loss(alone, torch.tensor(example["labels"]))
                packed_loss = summed_loss(packed[row, start:start + n], batch["labels"][row, start:start + n])
                assert abs(packed_loss.item() - alone_loss.item()) <= 1e-5 * max(1.0, alone_loss.item())
                alone_losses.append(alone_loss.item())
                start += n
        # The whole packed batch's loss (the trainer's) is the sum of the examples': no target
        # crosses an example boundary and padding carries none.
        total = token_loss_sum(net, batch, "cpu").item()
    assert abs(total - sum(alone_losses)) <= 1e-5 * sum(alone_losses)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_changing_the_first_example_leaves_the_second_untouched(attn):
    net = model(attn)
    first, second = examples([9, 11], seed=2)
    other = {**first, "input_ids": [(t + 17) % 120 + 4 for t in first["input_ids"]]}

    def second_logits(head: dict, positions: bool) -> torch.Tensor:
        batch = collate_packed([[head, second]], seq_len=20, pad_id=0)
        kwargs = {"position_ids": batch["position_ids"]} if positions else {}
        with torch.no_grad():
            return net(input_ids=batch["input_ids"], use_cache=False, **kwargs).logits[0, 9:20]

    assert (second_logits(first, True) - second_logits(other, True)).abs().max().item() <= 1e-6
    # The same rows without the per-example positions do leak: the check above can fail.
    assert (second_logits(first, False) - second_logits(other, False)).abs().max().item() > 1e-3


# --- the same objective, packed or padded -----------------------------------------------------------


def accumulated_gradients(net, micro_batches: list[dict]) -> tuple[float, list[torch.Tensor]]:
    """The trainer's per-step loss on one process, with DeepSpeed's 1/grad_accum applied here."""
    net.zero_grad()
    scale, targets = global_loss_scale(micro_batches, len(micro_batches), 1)
    total = 0.0
    for batch in micro_batches:
        loss = token_loss_sum(net, batch, "cpu")
        total += loss.item()
        (loss * scale / len(micro_batches)).backward()
    return total / targets, [p.grad.clone() for p in net.parameters()]


def test_packed_and_padded_batches_have_the_same_loss_and_gradients():
    net = model("sdpa")
    parts = examples([30, 5, 18, 9, 26, 4], seed=3)
    packed = [collate_packed([parts[:3], parts[3:]], seq_len=64, pad_id=0)]
    # Padded the same six examples are two micro batches with very different target counts.
    padded = [collate(parts[:1], pad_id=0), collate(parts[1:], pad_id=0)]
    assert target_count(packed[0]) == sum(target_count(b) for b in padded)
    loss_packed, grads_packed = accumulated_gradients(net, packed)
    loss_padded, grads_padded = accumulated_gradients(net, padded)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-6)
    for a, b in zip(grads_packed, grads_padded):
        assert (a - b).abs().max().item() <= 1e-6 * max(1.0, a.abs().max().item())
    # A mean per micro batch (what a per-batch loss averages) is another objective here.
    means = [token_loss_sum(net, b, "cpu").item() / target_count(b) for b in padded]
    assert abs(sum(means) / 2 - loss_padded) > 1e-3


# --- deterministic, sharded, resumable --------------------------------------------------------------


def test_rows_are_deterministic_per_seed_and_partitioned_over_ranks():
    data = examples(np.random.default_rng(4).integers(3, 40, size=300).tolist())
    make = lambda rank, seed=0: PackedBatches(data, 4, rank, 2, seed=seed, pad_id=0, seq_len=64)  # noqa: E731
    assert make(0).epoch_rows(0) == make(1).epoch_rows(0)
    assert make(0).epoch_rows(0) != make(0, seed=1).epoch_rows(0)
    assert make(0).epoch_rows(0) != make(0).epoch_rows(1)
    zero, one = make(0), make(1)
    for step in range(len(zero)):
        mine = {i for row in zero.batch_rows(0, step) for i in row}
        theirs = {i for row in one.batch_rows(0, step) for i in row}
        assert mine and theirs and not mine & theirs
    batch = next(iter(make(0)))
    assert batch["input_ids"].shape == (4, 64)


def test_resume_continues_with_the_same_rows():
    data = examples(np.random.default_rng(5).integers(3, 40, size=200).tolist())
    straight = PackedBatches(data, 2, 0, 1, seed=7, pad_id=0, seq_len=64)
    stream = straight.forever()
    for _ in range(len(straight) + 3):  # into the second epoch
        next(stream)
    state = straight.state_dict()
    expected = [next(stream) for _ in range(4)]
    resumed = PackedBatches(data, 2, 0, 1, seed=7, pad_id=0, seq_len=64)
    resumed.load_state_dict(state)
    for a, b in zip(expected, resumed.forever()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="resume with --packing and --seq_len 64"):
        ShardedBatches(data, 2, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="packed into rows of 64 tokens, this run packs rows of 48"):
        PackedBatches(data, 2, 0, 1, seed=7, pad_id=0, seq_len=48).load_state_dict(state)
    with pytest.raises(ValueError, match="not packed"):
        resumed.load_state_dict(ShardedBatches(data, 2, seed=7).state_dict())


def test_bundled_chat_packs_at_least_95_percent_full():
    from loretta_ds.tiny_llama import ensure_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_llama())
    data = prepare_data(tokenizer, ["bundled:chat"], seq_len=256)
    batches = PackedBatches(data.train, 4, 0, 2, seed=0, pad_id=data.pad_id, seq_len=256)
    assert batches.efficiency(0) >= 0.95
    padded = ShardedBatches(data.train, 8, 0, 1, seed=0, pad_id=data.pad_id)
    slots = sum(b["input_ids"].numel() for b in padded)
    assert sum(data.train["length"]) / slots < 0.6  # what padding wastes on the same data
