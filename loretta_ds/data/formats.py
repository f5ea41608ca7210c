"""Record formats: which columns each needs, how `auto` picks one, and the prompt template that
turns a record into (prompt, completion). The loss covers the completion only; for `text` the
prompt is empty, so the whole text is trained on.

| format            | columns                          | prompt                      | completion   |
| ----------------- | -------------------------------- | --------------------------- | ------------ |
| text              | text                             | ""                          | text + </s>  |
| prompt_completion | prompt, completion               | prompt (verbatim)           | completion + </s> |
| instruction       | instruction, [input], output     | Alpaca-style headers        | output + </s> |
| classification    | text, label                      | "{text}\\nAnswer:"          | " {label}"   |
| chat              | messages (or conversations)      | the chat template (chat.py) | every assistant turn |

Classification completions stop at the label word (no </s>): training and scoring then see the
same tokens, the label word's likelihood after the prompt (as in the LoRETTA paper's LLaMA runs).
"""

from __future__ import annotations

from dataclasses import dataclass

# The label of a token that is not trained on (prompt, padding): the ignore_index of the loss.
IGNORE_INDEX = -100

FORMATS = ("auto", "text", "prompt_completion", "instruction", "classification", "chat")

CLASSIFICATION_TEMPLATE = "{text}\nAnswer:"
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
INSTRUCTION_WITH_INPUT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class FormatSpec:
    """What a format needs and how it is trained.

    required: columns that must exist; optional: columns used when present.
    append_eos: end the completion with </s> (generation formats, so the model learns to stop).
    truncation_side: "right" cuts the end of long examples; "left" drops the oldest prompt
        tokens (after <s>) so the answer is never cut (classification).
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    append_eos: bool = True
    truncation_side: str = "right"


FORMAT_SPECS = {
    "text": FormatSpec("text", ("text",)),
    "prompt_completion": FormatSpec("prompt_completion", ("prompt", "completion")),
    "instruction": FormatSpec("instruction", ("instruction", "output"), optional=("input",)),
    "classification": FormatSpec("classification", ("text", "label"), append_eos=False,
                                  truncation_side="left"),
    # The template decides the end-of-turn tokens, so no </s> is appended.
    "chat": FormatSpec("chat", ("messages",), append_eos=False),
}
# ShareGPT records hold their turns under "conversations"; they count as the chat format's
# "messages" column.
CHAT_ALIASES = ("conversations",)
# `auto` tries these in order; the first whose required columns are all present wins, so
# text+label is classification, not text.
AUTO_ORDER = ("chat", "classification", "prompt_completion", "instruction", "text")


def check_format_name(fmt: str) -> str:
    """Return fmt if it is a known format name, else raise ValueError listing the valid ones."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return fmt


def _columns_help() -> str:
    return "; ".join(f"{name}: {', '.join(spec.required)}"
                     + (f" (optional {', '.join(spec.optional)})" if spec.optional else "")
                     for name, spec in FORMAT_SPECS.items())


def resolve_format(fmt: str, columns: list[str], source: str) -> str:
    """The concrete format for a source with these columns.

    fmt "auto" detects it (see AUTO_ORDER); an explicit fmt is checked against the columns.
    Raises ValueError naming the source, its columns and what each format needs.
    """
    check_format_name(fmt)
    present = set(columns)
    if present.intersection(CHAT_ALIASES):
        present.add("messages")
    if fmt == "auto":
        for name in AUTO_ORDER:
            if present.issuperset(FORMAT_SPECS[name].required):
                return name
        raise ValueError(
            f"{source}: cannot detect the data format from columns {sorted(present)}. "
            f"Rename the columns to one of these sets ({_columns_help()}) or pass --format ({', '.join(FORMAT_SPECS)}).")
    missing = [c for c in FORMAT_SPECS[fmt].required if c not in present]
    if missing:
        raise ValueError(
            f"{source}: format {fmt!r} needs columns {list(FORMAT_SPECS[fmt].required)} but "
            f"{missing} {'is' if len(missing) == 1 else 'are'} missing (columns found: "
            f"{sorted(present)}). Rename the columns, or pick the format that fits ({_columns_help()}).")
    return fmt


def render(fmt: str, record: dict) -> tuple[str, str]:
    """(prompt, completion) text of one record; the loss is later masked to the completion.

    record values must already be strings (loading checks that); for classification the
    completion is " " + label word, the space making the word its own token in LLaMA vocabularies.
    """
    if fmt == "text":
        return "", record["text"]
    if fmt == "prompt_completion":
        return record["prompt"], record["completion"]
    if fmt == "instruction":
        extra = record.get("input") or ""
        if extra.strip():
            prompt = INSTRUCTION_WITH_INPUT_TEMPLATE.format(instruction=record["instruction"], input=extra)
        else:
            prompt = INSTRUCTION_TEMPLATE.format(instruction=record["instruction"])
        return prompt, record["output"]
    if fmt == "classification":
        return classification_prompt(record["text"]), " " + record["label"]
    if fmt == "chat":
        return "", ""  # rendered with the tokenizer's chat template at tokenization (data/chat.py)
    raise ValueError(f"render() needs a concrete format, got {fmt!r}")


def classification_prompt(text: str) -> str:
    """The prompt after which the label word is scored."""
    return CLASSIFICATION_TEMPLATE.format(text=text)
