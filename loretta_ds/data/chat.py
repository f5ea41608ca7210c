"""Chat conversations: checking the turns, choosing the template, and token labels on the
assistant turns only.

Records hold their turns either OpenAI style (`messages`: [{"role", "content"}], role system /
user / assistant) or ShareGPT style (`conversations`: [{"from", "value"}], from system / human /
gpt); both become OpenAI-style turns.

Template: `--chat_template FILE` (a Jinja file) if given, else the tokenizer's own
`chat_template`, else DEFAULT_CHAT_TEMPLATE (tokenizers of base models, LLaMA-2 base and the
built-in tiny-llama have none):

    <s>### System:\\n{system}\\n\\n### User:\\n{user}\\n\\n### Assistant:\\n{assistant}</s>### User:\\n...

Labels: every assistant turn is trained on, from the first character after the rendered
generation prompt to the end of the turn's rendering (its end-of-turn marker, e.g. </s>,
included, so the model learns to stop). The character span of each turn comes from rendering
the conversation's prefixes (the turns before it with the generation prompt, then through it);
the whole text is tokenized once, and a token is a target when its character range (the fast
tokenizer's offsets) overlaps an assistant span. So the masks are exact at the token level
even when the tokenizer merges the end of a role marker with the first content token ("▁H" in
"Assistant: Hello"): that token is what the model has to produce there, and it is a target.
"""

from __future__ import annotations

import json
from pathlib import Path

from .formats import IGNORE_INDEX

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
CHAT_COLUMNS = ("messages", "conversations")
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- '### System:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '### User:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- else -%}{{- '### Assistant:\\n' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Assistant:\\n' -}}{%- endif -%}"
)
DEFAULT_TEMPLATE_NAME = ("the default chat template (loretta_ds.data.chat.DEFAULT_CHAT_TEMPLATE: "
                         "### System / ### User / ### Assistant headers, </s> after each answer)")
# Rendered once when a template is chosen: a template that fails or drops content fails here,
# before any record is tokenized.
_PROBE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
          {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "Again."},
          {"role": "assistant", "content": "Hello again."}]


# --- turns -------------------------------------------------------------------------------------------


def _kind(value) -> str:
    return "null" if value is None else {"dict": "object", "str": "string"}.get(type(value).__name__,
                                                                                  type(value).__name__)


def normalize_turns(value, column: str, where: str) -> list[dict]:
    """One record's turns as [{"role", "content"}].

    column: "messages" (OpenAI style) or "conversations" (ShareGPT). where: names the record in
    errors ("data.jsonl: record 3"). Raises ValueError for a value that is not a list of turn
    objects, an unknown role, empty content, and a conversation without an assistant turn.
    """
    sharegpt = column == "conversations"
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    accepted = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
    if not isinstance(value, list) or not value:
        shown = "an empty list" if isinstance(value, list) else f"a JSON {_kind(value)}"
        raise ValueError(f"{where}: {column} is {shown}; it must be a list of turns like "
                         f'{{"{role_key}": "user", "{content_key}": "..."}}. Fix or remove the record')
    turns = []
    for number, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: turn {number} of {column} is a JSON {_kind(turn)}, not an object "
                             f'with "{role_key}" and "{content_key}"; fix or remove the record')
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in accepted:
            raise ValueError(f"{where}: turn {number} has {role_key} {role!r}; use one of "
                             f"{', '.join(accepted)}. Fix or remove the record")
        if not isinstance(content, str) or not content.strip():
            shown = "empty" if isinstance(content, str) or content is None else f"a JSON {_kind(content)}"
            raise ValueError(f"{where}: turn {number} ({role}) has {shown} {content_key}; every turn "
                             f"needs text. Fix or remove the record")
        turns.append({"role": accepted[role], "content": content})
    if not any(t["role"] == "assistant" for t in turns):
        raise ValueError(f"{where}: the conversation has no assistant turn, so nothing would be "
                         f"trained on; add one or remove the record")
    return turns


def chat_column(raw, label: str) -> list[str]:
    """The checked turns of every record of a loaded dataset, as JSON strings."""
    column = "messages" if "messages" in raw.column_names else "conversations"
    return [json.dumps(normalize_turns(value, column, f"{label}: record {index + 1}"), ensure_ascii=False)
            for index, value in enumerate(raw[column])]


# --- the template -----------------------------------------------------------------------------------


def _render(tokenizer, template: str, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def resolve_chat_template(tokenizer, path: str | None = None) -> tuple[str, str]:
    """(template, where it comes from): the file at `path`, else the tokenizer's, else the default.

    The template is rendered once on a probe conversation. Raises FileNotFoundError for a
    missing file and ValueError for a template that does not render or drops a turn's content.
    """
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"--chat_template {path}: no such file; pass a Jinja chat template file")
        template, origin = file.read_text(encoding="utf-8"), f"the file {file}"
        if not template.strip():
            raise ValueError(f"--chat_template {path} is empty; put a Jinja chat template in it")
    elif getattr(tokenizer, "chat_template", None):
        template = tokenizer.chat_template
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default") or next(iter(template.values()))
        origin = "the tokenizer's own chat template"
    else:
        template, origin = DEFAULT_CHAT_TEMPLATE, DEFAULT_TEMPLATE_NAME
    try:
        text = _render(tokenizer, template, _PROBE, generation_prompt=False)
    except Exception as err:  # noqa: BLE001 - Jinja syntax, undefined names, raise_exception()...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"chat template from {origin} does not render a system/user/assistant "
                         f"conversation ({type(err).__name__}: {reason}); fix the template (it gets "
                         f"messages, bos_token, eos_token and add_generation_prompt)") from None
    missing = [t["content"] for t in _PROBE if t["content"] not in text]
    if missing:
        raise ValueError(f"chat template from {origin} leaves out turn content ({missing[0]!r} is not in "
                         f"its rendering); fix the template so that every message's content is rendered")
    return template, origin


# --- labels ------------------------------------------------------------------------------------------


def assistant_spans(tokenizer, template: str, turns: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) of its assistant turns."""
    try:
        text = _render(tokenizer, template, turns, generation_prompt=False)
        spans = []
        for index, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before = _render(tokenizer, template, turns[:index], generation_prompt=True) if index \
                else _opening(tokenizer, template)
            through = _render(tokenizer, template, turns[:index + 1], generation_prompt=False)
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError(
                    f"{where}: the chat template renders the first {index + 1} turns differently from "
                    f"the start of the whole conversation, so the assistant turns cannot be located; "
                    f"use a template whose rendering of a conversation's first turns is a prefix of "
                    f"the rendering of the whole")
            spans.append((len(before), len(through)))
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - the template's own errors (e.g. roles must alternate)
        raise ValueError(f"{where}: the chat template does not render this conversation "
                         f"({type(err).__name__}: {str(err).strip()[:200]}); fix the record or the template") from None
    return text, spans


def _opening(tokenizer, template: str) -> str:
    """What a template renders before the content of a first turn that is the assistant's
    (transformers renders no empty conversation, so: a probe turn, cut at its content)."""
    probe = "\u2063first turn\u2063"
    rendered = _render(tokenizer, template, [{"role": "assistant", "content": probe}], generation_prompt=False)
    return rendered[:max(rendered.find(probe), 0)]


def target_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token: does its character range overlap an assistant span?"""
    mask = []
    for start, end in offsets:
        if end <= start:  # zero-width (an added special token): inside a span or not
            mask.append(any(s <= start < e for s, e in spans))
        else:
            mask.append(any(start < e and end > s for s, e in spans))
    return mask


def chat_examples(tokenizer, template: str, conversations: list[str], wheres: list[str]
                  ) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of conversations (JSON turn lists), before any cut to seq_len."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chat data needs a fast tokenizer (a tokenizer.json in the model directory) to "
                         "locate the assistant tokens exactly; add one to the model directory")
    texts, all_spans = [], []
    for conversation, where in zip(conversations, wheres):
        text, spans = assistant_spans(tokenizer, template, json.loads(conversation), where)
        texts.append(text)
        all_spans.append(spans)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    examples = []
    for ids, offsets, spans in zip(encoded["input_ids"], encoded["offset_mapping"], all_spans):
        mask = target_mask(offsets, spans)
        examples.append((list(ids), [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]))
    return examples
