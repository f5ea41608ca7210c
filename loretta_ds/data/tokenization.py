"""Canonical records -> token ids and loss labels (-100 on <s> and prompt tokens), cut to seq_len.

The prompt and prompt+completion are tokenized jointly and the answer is what follows their
common prefix: that is how the model sees the text at inference, and no tokenizer-specific
assumption about leading spaces is needed. (If a tokenizer merges across the boundary, the one
merged token counts as answer.) Chat records are rendered with their chat template instead and
trained on every assistant turn (data/chat.py); they are cut at the end like generation formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from .chat import chat_examples
from .formats import FORMAT_SPECS, IGNORE_INDEX


@dataclass
class TruncationStats:
    """How many examples were longer than seq_len.

    examples: examples seen; truncated: longer than seq_len (cut); dropped: left with no answer
    token after cutting (removed: they would train nothing); longest: longest example in tokens
    before cutting.
    """

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    longest: int = 0
    seq_len: int = 0
    # The first dropped example: "source: record N" and its prompt length in tokens (the tokens
    # before its first answer token), for the error --packing raises about it.
    first_dropped: tuple[str, int] | None = None

    def __str__(self) -> str:
        text = (f"{self.truncated} of {self.examples} examples exceeded seq_len={self.seq_len} "
                f"and were truncated (longest: {self.longest} tokens)")
        if self.dropped:
            text += f"; {self.dropped} had no answer token left and were dropped"
        return text


def special_ids(tokenizer) -> tuple[int | None, int | None]:
    """(bos, eos) ids of a tokenizer; either may be None.

    bos is returned only when the tokenizer itself starts an encoding with it (LLaMA-2, LLaMA-3,
    Mistral): training then sees what inference sees. SmolLM2's declared bos is the chat-turn
    marker <|im_start|> and Qwen2 has none; their encodings start with the text, so no bos is
    prepended for them. eos ends every generation-format completion, so the model learns to stop.
    """
    bos = tokenizer.bos_token_id
    if bos is not None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if not probe or probe[0] != bos:
            bos = None
    return bos, tokenizer.eos_token_id


def pad_id_of(tokenizer) -> int:
    """The id written at padded positions: the tokenizer's pad, else eos (LLaMA-2 has no pad),
    else 0. The tokenizer is never changed (no token added, no embedding resized). Padded
    positions are masked out of attention (attention_mask 0) and of the loss (label -100), and
    labels never come from this id, so a pad equal to eos (SmolLM2, LLaMA-2 here) does not mask
    the eos that ends each completion: that eos is still trained."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def build_example(prompt_ids: list[int], full_ids: list[int], bos: int | None, eos: int | None,
                  append_eos: bool, seq_len: int, truncation_side: str
                  ) -> tuple[list[int], list[int], bool]:
    """Assemble one example from tokenized prompt and prompt+completion.

    Returns (input_ids, labels, truncated), both lists of length <= seq_len. labels equal
    input_ids on answer tokens and IGNORE_INDEX elsewhere (HF causal LMs shift them inside).
    truncation_side "left" keeps the answer and drops the oldest prompt tokens (after <s>);
    "right" cuts the end. The answer may come back empty after a right cut.
    """
    split = _common_prefix(prompt_ids, full_ids)
    head = [bos] if bos is not None else []
    prompt_part, answer = full_ids[:split], full_ids[split:]
    if append_eos and eos is not None:
        answer = answer + [eos]
    total = len(head) + len(prompt_part) + len(answer)
    truncated = total > seq_len
    if truncated:
        room = seq_len - len(head)
        if truncation_side == "left" and len(answer) < room:
            prompt_part = prompt_part[len(prompt_part) - (room - len(answer)):]
        else:
            prompt_part = prompt_part[:room]
            answer = answer[:room - len(prompt_part)]
    input_ids = head + prompt_part + answer
    labels = [IGNORE_INDEX] * (len(head) + len(prompt_part)) + answer
    return input_ids, labels, truncated


def encode_pairs(tokenizer, prompts: list[str], completions: list[str]
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the prompts and of prompt+completion, without special tokens (batched)."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + c for p, c in zip(prompts, completions)],
                         add_special_tokens=False)["input_ids"]
    return prompt_ids, full_ids


def _record_names(rows: dict) -> list[str]:
    records = rows.get("record") or [""] * len(rows["format"])
    return [f"{source}: record {record}" if record else source
            for source, record in zip(rows["source"], records)]


def _answer_start(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def _chunk_examples(rows: dict, tokenizer, seq_len: int, chat_template: str | None):
    """(input_ids, labels, truncated, length before cutting, prompt tokens) per row of a chunk."""
    bos, eos = special_ids(tokenizer)
    chat_rows = [i for i, fmt in enumerate(rows["format"]) if fmt == "chat"]
    chat = {}
    if chat_rows:
        if chat_template is None:
            raise ValueError("chat records need a chat template; pass chat_template (see data/chat.py)")
        names = _record_names(rows)
        built = chat_examples(tokenizer, chat_template, [rows["messages"][i] for i in chat_rows],
                              [names[i] for i in chat_rows])
        chat = dict(zip(chat_rows, built))
    plain_rows = [i for i in range(len(rows["format"])) if i not in chat]
    plain = {}
    if plain_rows:
        prompt_ids, full_ids = encode_pairs(tokenizer, [rows["prompt"][i] for i in plain_rows],
                                            [rows["completion"][i] for i in plain_rows])
        plain = dict(zip(plain_rows, zip(prompt_ids, full_ids)))
    for index, fmt in enumerate(rows["format"]):
        if index in chat:
            ids, labels = chat[index]
            # Right cut, like the generation formats: later turns go first.
            yield ids[:seq_len], labels[:seq_len], len(ids) > seq_len, len(ids), _answer_start(labels)
            continue
        spec = FORMAT_SPECS[fmt]
        p_ids, f_ids = plain[index]
        input_ids, labels, truncated = build_example(
            p_ids, f_ids, bos, eos, spec.append_eos, seq_len, spec.truncation_side)
        length = len(f_ids) + (bos is not None) + (spec.append_eos and eos is not None)
        prompt = (bos is not None) + _common_prefix(p_ids, f_ids)
        yield input_ids, labels, truncated, length, prompt


def tokenize_dataset(dataset: datasets.Dataset, tokenizer, seq_len: int, chat_template: str | None = None
                     ) -> tuple[datasets.Dataset, TruncationStats]:
    """Tokenize canonical records (prompt, completion, format columns; messages for chat).

    Returns (dataset with input_ids, labels and length columns, one example per record except
    dropped ones; lengths <= seq_len, TruncationStats). Each record's format decides </s> and
    the truncation side (formats.FORMAT_SPECS); chat records are rendered with chat_template.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one prompt and one answer token), got {seq_len}")
    stats = TruncationStats(seq_len=seq_len)
    columns = {"input_ids": [], "labels": [], "length": []}
    chunk = 2048  # bounds the memory of one batched tokenizer call
    for start in range(0, len(dataset), chunk):
        rows = dataset[start:start + chunk]
        names = _record_names(rows)
        examples = _chunk_examples(rows, tokenizer, seq_len, chat_template)
        for name, (input_ids, labels, truncated, length, prompt) in zip(names, examples):
            stats.examples += 1
            stats.longest = max(stats.longest, length)
            stats.truncated += truncated
            if all(label == IGNORE_INDEX for label in labels):
                stats.dropped += 1
                if stats.first_dropped is None:
                    stats.first_dropped = (name, prompt)
                continue
            columns["input_ids"].append(input_ids)
            columns["labels"].append(labels)
            columns["length"].append(len(input_ids))
    return datasets.Dataset.from_dict(columns), stats
