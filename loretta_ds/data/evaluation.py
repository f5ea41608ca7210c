"""Classification by label-word likelihood: each candidate label word is scored by its mean token
log-probability after the record's prompt, and the best-scoring word is the prediction.

This is the LoRETTA paper's evaluation for LLaMA (inherited from MeZO): no classifier head, the
language model itself ranks the label words. The model is only called as
model(input_ids=..., attention_mask=...).logits, so a DeepSpeed engine or any wrapper works; under
ZeRO-3 call it on every rank (each runs the same forwards).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .formats import FORMAT_SPECS, classification_prompt
from .batches import collate
from .formats import IGNORE_INDEX
from .tokenization import build_example, encode_pairs, pad_id_of, special_ids


def _prompts_and_labels(records) -> tuple[list[str], list[str]]:
    # Canonical records carry the rendered prompt; raw {"text", "label"} records are rendered here.
    if hasattr(records, "column_names"):
        columns = records.column_names
        if "prompt" in columns:
            return list(records["prompt"]), list(records["label"])
        return [classification_prompt(t) for t in records["text"]], list(records["label"])
    prompts = [r["prompt"] if "prompt" in r else classification_prompt(r["text"]) for r in records]
    return prompts, [r["label"] for r in records]


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def label_word_scores(model, tokenizer, prompts: Sequence[str], label_words: Sequence[str],
                      seq_len: int, batch_size: int = 16) -> torch.Tensor:
    """Mean log-probability of each label word after each prompt.

    Returns float32 scores [len(prompts), len(label_words)] on the CPU. Each candidate sequence
    is built exactly as for training (<s> prompt " word", prompt cut from the left to fit
    seq_len), so the scores match the trained loss.
    """
    if not label_words:
        raise ValueError("label_words is empty; classification needs at least two label words")
    if not prompts:
        return torch.zeros(0, len(label_words))
    bos, eos = special_ids(tokenizer)
    pad_id = pad_id_of(tokenizer)
    side = FORMAT_SPECS["classification"].truncation_side
    candidates = [(p, " " + w) for p in prompts for w in label_words]
    device = _device_of(model)
    was_training = getattr(model, "training", False)
    model.eval()
    scores = []
    try:
        for start in range(0, len(candidates), batch_size):
            chunk = candidates[start:start + batch_size]
            prompt_ids, full_ids = encode_pairs(tokenizer, [c[0] for c in chunk], [c[1] for c in chunk])
            rows = []
            for p_ids, f_ids in zip(prompt_ids, full_ids):
                input_ids, labels, _ = build_example(p_ids, f_ids, bos, eos, False, seq_len, side)
                rows.append({"input_ids": input_ids, "labels": labels})
            batch = collate(rows, pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            # Position t predicts token t+1. Only answer positions go through log_softmax, so
            # memory stays [answer tokens, vocab] rather than [batch, seq, vocab].
            targets = batch["labels"][:, 1:].to(device)
            answer = targets != IGNORE_INDEX
            rows_of = answer.nonzero(as_tuple=True)[0]
            log_probs = torch.log_softmax(logits[:, :-1][answer].float(), dim=-1)
            token_scores = log_probs.gather(-1, targets[answer].unsqueeze(-1)).squeeze(-1)
            sums = torch.zeros(len(chunk), device=device).index_add_(0, rows_of, token_scores)
            scores.append((sums / answer.sum(dim=1).clamp(min=1)).cpu())
    finally:
        if was_training:
            model.train()
    return torch.cat(scores).view(len(prompts), len(label_words))


def classification_predictions(model, tokenizer, records, label_words: Sequence[str],
                               seq_len: int, batch_size: int = 16) -> list[int]:
    """Index into label_words of the predicted label of each record (ties: the first word)."""
    prompts, _ = _prompts_and_labels(records)
    scores = label_word_scores(model, tokenizer, prompts, label_words, seq_len, batch_size)
    return scores.argmax(dim=1).tolist()


def classification_accuracy(model, tokenizer, records, label_words: Sequence[str],
                            seq_len: int, batch_size: int = 16) -> float:
    """Fraction of records whose label word scores highest among label_words.

    records: canonical records (prompt, label) from load_records/prepare_data, or raw
    {"text", "label"} records (a datasets.Dataset or a list of dicts). Raises ValueError if a
    record's label is not one of label_words.
    """
    prompts, labels = _prompts_and_labels(records)
    if not prompts:
        raise ValueError("no records to evaluate")
    words = list(label_words)
    for index, label in enumerate(labels):
        if label not in words:
            raise ValueError(f"evaluation record {index + 1} has label {label!r}, which is not in "
                             f"the label set {words}")
    scores = label_word_scores(model, tokenizer, prompts, words, seq_len, batch_size)
    predicted = scores.argmax(dim=1)
    gold = torch.tensor([words.index(label) for label in labels])
    return float((predicted == gold).float().mean().item())


def sharded_label_word_hits(model, tokenizer, records, label_words: Sequence[str], seq_len: int, batch_size: int,
                            rank: int, world_size: int, limit: int | None = None) -> tuple[int, int]:
    """(correct, counted) label-word predictions of this rank's share of ``records`` (the first
    ``limit`` of them when given); summed over ranks they give the accuracy.

    Every rank scores the same number of prompts, padding its share with a repeat that is not
    counted: under ZeRO-3 each forward is collective, so ranks must run equally many.
    """
    prompts, labels = _prompts_and_labels(records)
    if limit is not None:
        prompts, labels = prompts[:limit], labels[:limit]
    own = list(range(rank, len(prompts), world_size))
    share = -(-len(prompts) // world_size)
    rows = own + [own[0] if own else 0] * (share - len(own))
    scores = label_word_scores(model, tokenizer, [prompts[i] for i in rows], label_words, seq_len,
                               batch_size=batch_size)
    predicted = scores.argmax(dim=1).tolist()
    correct = sum(int(label_words[predicted[slot]] == labels[index]) for slot, index in enumerate(own))
    return correct, len(own)


def generation_prompts(examples, count: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference ids) of the first ``count`` tokenized examples that have both: the
    prompt is every token before the first trained one, the reference the run of trained tokens
    that follows (a chat example's first assistant turn). For sample generations at eval time."""
    found = []
    if examples is None:
        return found
    for ids, labels in zip(examples["input_ids"], examples["labels"]):
        if len(found) >= count:
            break
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
        if not first:  # no trained token, or no prompt before it
            continue
        end = next((i for i in range(first, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
        found.append((list(ids[:first]), list(ids[first:end])))
    return found
