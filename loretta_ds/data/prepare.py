"""prepare_data: specs -> checked records -> train/eval splits -> tokenized datasets, in one call.

All checks that read only the data (files, JSON, formats, columns, labels, weights) run before any
tokenization, so a user error surfaces in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets

from .chat import resolve_chat_template
from .formats import FORMAT_SPECS, check_format_name
from .files import (DatasetSpec, as_specs, canonicalize, combined_format, has_split, mix, mix_counts,
                      parse_dataset_specs, read_raw)
from .tokenization import TruncationStats, pad_id_of, special_ids, tokenize_dataset

# What happens to an example whose prompt leaves no answer token within seq_len (run_config's
# --too_long declares the flag): "drop" removes and counts it, "refuse" stops before training.
TOO_LONG_POLICIES = ("drop", "refuse")


@dataclass
class SourceSummary:
    """Where one spec's examples came from and how many were used."""

    source: str
    format: str
    train_records: int
    train_used: int
    eval_records: int
    eval_origin: str  # "validation split", "held out", "eval data" or "none"


@dataclass
class PreparedData:
    """Everything the training loop needs from the data.

    train / eval: tokenized datasets (input_ids, labels, length); eval is None without eval data.
    eval_records: canonical eval records (prompt, completion, label, format, source), for
    classification_accuracy. format: the resolved format ("mixed" across formats).
    label_words: the classification label set (as given, else the train labels sorted), None
    when no part is classification.
    chat_template/chat_template_origin: see prepare_data's chat_template.
    """

    train: datasets.Dataset
    eval: datasets.Dataset | None
    eval_records: datasets.Dataset | None
    format: str
    label_words: list[str] | None
    train_stats: TruncationStats
    eval_stats: TruncationStats | None
    pad_id: int
    seq_len: int
    sources: list[SourceSummary] = field(default_factory=list)
    # The Jinja template chat records were rendered with, and where it came from (None without
    # chat data and without --chat_template).
    chat_template: str | None = None
    chat_template_origin: str | None = None
    too_long: str = "drop"

    @property
    def classification_eval_records(self) -> datasets.Dataset | None:
        """The eval records that are classification (scored by label words), or None."""
        if self.eval_records is None or not self.label_words:
            return None
        keep = [i for i, f in enumerate(self.eval_records["format"]) if f == "classification"]
        return self.eval_records.select(keep) if keep else None

    def summary(self) -> str:
        """A few lines for the run log."""
        lines = [f"data format {self.format}, seq_len {self.seq_len}: "
                 f"{len(self.train)} train / {len(self.eval) if self.eval is not None else 0} eval examples"]
        for s in self.sources:
            used = f" (mixed to {s.train_used})" if s.train_used != s.train_records else ""
            lines.append(f"  {s.source} [{s.format}]: {s.train_records} train{used}, "
                         f"{s.eval_records} eval ({s.eval_origin})")
        if self.label_words:
            lines.append(f"  label words: {', '.join(self.label_words)}")
        if self.chat_template_origin:
            lines.append(f"  chat template: {self.chat_template_origin}")
        lines.append(f"  train: {self.train_stats}")
        if self.eval_stats is not None:
            lines.append(f"  eval: {self.eval_stats}")
        lines.append(f"  an example whose prompt leaves no answer token within seq_len is "
                     + ("dropped and counted (--too_long drop; --too_long refuse stops the run instead)"
                        if self.too_long == "drop" else "refused (--too_long refuse): none here"))
        return "\n".join(lines)


def _hold_out(part: datasets.Dataset, split: float, seed: int, source: str
              ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held out) of ``part``: ``split`` is a fraction of its records (< 1) or a count."""
    count = int(split) if split >= 1 else max(1, round(len(part) * split))
    if count >= len(part):
        share = f"{count} records" if split >= 1 else f"{split:.0%}"
        raise ValueError(f"{source} has {len(part)} records: too few to hold out a validation "
                         f"split ({share}); add records, lower --eval_split or pass --eval_dataset")
    split = part.train_test_split(test_size=count, seed=seed, shuffle=True)
    return split["train"], split["test"]


def _label_set(parts: list[datasets.Dataset], label_words: list[str] | None) -> list[str] | None:
    seen = sorted({w for p in parts if p[0]["format"] == "classification" for w in p["label"]})
    if label_words is not None:
        words = [w.strip() for w in label_words]
        if len(set(words)) != len(words) or not all(words):
            raise ValueError(f"label_words {label_words} must be distinct, non-empty words")
        return words if any(p[0]["format"] == "classification" for p in parts) else None
    if not seen:
        return None
    if len(seen) < 2:
        raise ValueError(f"classification data has a single label {seen[0]!r}; a label set needs "
                         f"at least two labels (or pass label_words)")
    return seen


def prepare_data(tokenizer, specs: list[str] | list[DatasetSpec] | None = None, fmt: str = "auto", seq_len: int = 512,
                 seed: int = 0, eval_specs: list[str] | None = None, eval_fraction: float = 0.05,
                 label_words: list[str] | None = None, chat_template: str | None = None,
                 too_long: str = "drop") -> PreparedData:
    """Load, check, split, mix and tokenize the training (and eval) data.

    specs: `SOURCE[:WEIGHT]` strings (see parse_dataset_specs) or the DatasetSpecs it made; None = the
        bundled sentiment task.
    eval_specs: eval data; without it each spec's own validation split is used, or, for a spec
        that has none (a single file), a seeded eval_fraction of its records is held out (a
        fraction < 1, or a count of records >= 1).
    label_words: the classification label set (and the words for integer labels); default: the
        labels seen in the training data.
    chat_template: a Jinja file for chat records; default: the tokenizer's template, else
        data/chat.py's DEFAULT_CHAT_TEMPLATE.
    too_long: an example whose prompt leaves no answer token within seq_len is dropped and
        counted ("drop"), or an error naming it ("refuse"); packed or not.
    Returns PreparedData. Raises ValueError / FileNotFoundError for user errors, before tokenizing.
    """
    check_format_name(fmt)
    if not (0.0 < eval_fraction < 1.0 or (eval_fraction >= 1 and eval_fraction == int(eval_fraction))):
        raise ValueError(f"eval_fraction must be in (0, 1) or a count of records, got {eval_fraction}")
    if too_long not in TOO_LONG_POLICIES:
        raise ValueError(f"unknown too_long {too_long!r}: use one of {', '.join(TOO_LONG_POLICIES)}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    parsed = as_specs(specs)
    parsed_eval = as_specs(eval_specs) if eval_specs else None

    # Train parts first: the label set comes from them and the eval labels are checked against it.
    train_parts, formats = [], []
    for spec in parsed:
        raw, label = read_raw(spec, "train")
        part, resolved = canonicalize(raw, fmt, label, label_words)
        train_parts.append(part)
        formats.append(resolved)
    words = _label_set(train_parts, label_words)
    _check_eos(tokenizer, train_parts)

    eval_parts, origins = [], []
    if parsed_eval is not None:
        for spec in parsed_eval:
            split = "validation" if has_split(spec, "validation") else "train"
            raw, label = read_raw(spec, split)
            eval_parts.append(canonicalize(raw, fmt, label, words)[0])
        origins = ["eval data"] * len(parsed)
    else:
        for index, spec in enumerate(parsed):
            if spec.kind != "file" and has_split(spec, "validation"):
                raw, label = read_raw(spec, "validation")
                eval_parts.append(canonicalize(raw, formats[index], label, words)[0])
                origins.append("validation split")
            else:
                train_parts[index], held = _hold_out(train_parts[index], eval_fraction,
                                                     seed, spec.source)
                eval_parts.append(held)
                origins.append("held out")

    weights = [s.weight for s in parsed] if parsed[0].weight is not None else None
    train_records = mix(train_parts, weights, seed)
    eval_records = datasets.concatenate_datasets(eval_parts) if eval_parts else None

    template = origin = None
    if chat_template or any(p[0]["format"] == "chat" for p in train_parts + eval_parts):
        template, origin = resolve_chat_template(tokenizer, chat_template)
    train, train_stats = tokenize_dataset(train_records, tokenizer, seq_len, template)
    if too_long == "refuse":
        _refuse_too_long(train_stats, seq_len)
    if len(train) == 0:
        raise ValueError(f"no training example has an answer token within seq_len={seq_len} "
                         f"({train_stats}); raise seq_len or shorten the prompts")
    evaluation, eval_stats = (tokenize_dataset(eval_records, tokenizer, seq_len, template)
                              if eval_records is not None else (None, None))
    if too_long == "refuse" and eval_stats is not None:
        _refuse_too_long(eval_stats, seq_len)

    sources = []
    used = mix_counts([len(p) for p in train_parts], weights)
    for index, spec in enumerate(parsed):
        eval_count = len(eval_parts[index]) if parsed_eval is None else 0
        sources.append(SourceSummary(spec.source, formats[index], len(train_parts[index]),
                                     used[index], eval_count, origins[index]))
    return PreparedData(train=train, eval=evaluation, eval_records=eval_records,
                        format=combined_format(formats), label_words=words,
                        train_stats=train_stats, eval_stats=eval_stats,
                        pad_id=pad_id_of(tokenizer), seq_len=seq_len, sources=sources,
                        chat_template=template, chat_template_origin=origin, too_long=too_long)


def _refuse_too_long(stats: TruncationStats, seq_len: int) -> None:
    if stats.dropped:
        where, prompt = stats.first_dropped
        raise ValueError(f"--too_long refuse: {where} has {prompt} prompt tokens, which leave no answer token "
                         f"within --seq_len {seq_len} ({stats.dropped} such examples); raise --seq_len above "
                         f"{prompt}, shorten those prompts, or pass --too_long drop to drop them (counted in "
                         "the log)")


def _check_eos(tokenizer, parts: list[datasets.Dataset]) -> None:
    """Generation formats end each completion with the tokenizer's eos, so the model learns to stop;
    without one it would be trained to run on. Refused before anything is tokenized."""
    needing = sorted({fmt for part in parts for fmt in part.unique("format") if FORMAT_SPECS[fmt].append_eos})
    if needing and special_ids(tokenizer)[1] is None:
        raise ValueError(f"the tokenizer has no end-of-sequence token (eos_token), so the {', '.join(needing)} "
                         "examples would train without one and the model would never learn to end its answers; "
                         "set eos_token in the model directory's tokenizer_config.json (e.g. \"</s>\" for "
                         "LLaMA-2), or use classification data, which needs none")


__all__ = ["DatasetSpec", "PreparedData", "SourceSummary", "prepare_data"]
