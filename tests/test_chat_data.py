"""Chat data: OpenAI and ShareGPT records, the chat template (the tokenizer's, a file, the
default), labels on exactly the assistant tokens of every turn, and the user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loretta_ds.data import IGNORE_INDEX, load_records, prepare_data
from loretta_ds.data.chat import DEFAULT_CHAT_TEMPLATE, chat_examples
from loretta_ds.tiny_llama import corpus_documents, hf_tokenizer_from_sentencepiece, train_sentencepiece

# The gen prompt ends in a space that the tokenizer merges with the answer's first letter ("▁H").
SPACE_TEMPLATE = ("{% for m in messages %}{% if m.role == 'user' %}User: {{ m.content }}\n"
                  "{% else %}Assistant: {{ m.content }}{{ eos_token }}\n{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}Assistant: {% endif %}")
CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]


@pytest.fixture(scope="module")
def tokenizer():
    return hf_tokenizer_from_sentencepiece(train_sentencepiece(corpus_documents()), 512)


@pytest.fixture
def templated(tokenizer):
    """The same tokenizer with a chat template of its own."""
    tokenizer.chat_template = SPACE_TEMPLATE
    yield tokenizer
    tokenizer.chat_template = None


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pieces(tokenizer, ids, labels) -> list[tuple[str, bool]]:
    return [(tokenizer.convert_ids_to_tokens(i), label != IGNORE_INDEX) for i, label in zip(ids, labels)]


def targets(tokenizer, template, turns) -> list[tuple[str, bool]]:
    ids, labels = chat_examples(tokenizer, template, [json.dumps(turns)], ["test"])[0]
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))
    return pieces(tokenizer, ids, labels)


# --- labels -------------------------------------------------------------------------------------------


def test_default_template_labels_exactly_every_assistant_turn(tokenizer):
    got = targets(tokenizer, DEFAULT_CHAT_TEMPLATE, [{"role": "system", "content": "Be nice."}, *CONVERSATION])
    # Hand-checked: "<s>### System:\nBe nice.\n\n### User:\nHi\n\n### Assistant:\nHello</s>### User:\n..."
    header = ["<0x23>"] * 3
    user = header + ["▁", "<0x55>", "s", "er", ":", "\n"]
    assistant = header + ["▁A", "s", "s", "ist", "ant", ":", "\n"]
    expected = ([("<s>", False)] + [(p, False) for p in header + ["▁S", "y", "s", "t", "e", "m", ":", "\n"]]
                + [(p, False) for p in ["B", "e", "▁n", "ice", ".\n", "\n"]]
                + [(p, False) for p in user + ["H", "i", "\n", "\n"] + assistant]
                + [(p, True) for p in ["H", "ell", "o", "</s>"]]
                + [(p, False) for p in user + ["B", "y", "e", "\n", "\n"] + assistant]
                + [(p, True) for p in ["S", "ee", "▁you", "</s>"]])
    assert got == expected


def test_a_conversation_opening_with_the_assistant_trains_its_content_not_the_header(tokenizer):
    got = targets(tokenizer, DEFAULT_CHAT_TEMPLATE, CONVERSATION[1:])
    assert [p for p, target in got if target] == ["H", "ell", "o", "</s>", "S", "ee", "▁you", "</s>"]
    assert got[0] == ("<s>", False)


def test_tokenizer_template_merging_marker_and_answer_labels_the_merged_token(templated):
    text = templated.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == "User: Hi\nAssistant: Hello</s>\nUser: Bye\nAssistant: See you</s>\n"
    # The merge: the prompt alone ends in a lone "▁" token that the whole text does not have, so
    # counting the prompt's tokens would mislabel the first answer token.
    prompt = templated.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    alone = templated(prompt, add_special_tokens=False)["input_ids"]
    joint = templated(text, add_special_tokens=False)["input_ids"]
    assert templated.convert_ids_to_tokens(alone[-1]) == "▁" and joint[len(alone) - 1] != alone[-1]

    got = targets(templated, templated.chat_template, CONVERSATION)
    user = ["▁", "<0x55>", "s", "er", ":"]
    assistant = ["A", "s", "s", "ist", "ant", ":"]
    expected = ([(p, False) for p in user + ["▁H", "i", "\n"] + assistant]
                + [(p, True) for p in ["▁H", "ell", "o", "</s>", "\n"]]
                + [(p, False) for p in ["<0x55>", "s", "er", ":", "▁B", "y", "e", "\n"] + assistant]
                + [(p, True) for p in ["▁S", "ee", "▁you", "</s>", "\n"]])
    assert got == expected


def test_prepare_uses_the_tokenizers_template_and_sharegpt_matches_openai(templated, tmp_path):
    openai = write_jsonl(tmp_path / "openai.jsonl", [{"messages": CONVERSATION}] * 30)
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": [
        {"from": {"user": "human", "assistant": "gpt"}[t["role"]], "value": t["content"]} for t in CONVERSATION]}] * 30)
    a = prepare_data(templated, [str(openai)], seq_len=64)
    b = prepare_data(templated, [str(sharegpt)], seq_len=64)
    assert a.format == b.format == "chat"
    assert a.chat_template_origin == "the tokenizer's own chat template" and "chat template: the tokenizer" in a.summary()
    assert a.train[0]["labels"] == b.train[0]["labels"] and a.train[0]["input_ids"] == b.train[0]["input_ids"]
    trained = [p for p, target in pieces(templated, a.train[0]["input_ids"], a.train[0]["labels"]) if target]
    assert trained == ["▁H", "ell", "o", "</s>", "\n", "▁S", "ee", "▁you", "</s>", "\n"]


def test_template_file_overrides_and_default_is_stated(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}] * 30)
    default = prepare_data(tokenizer, [str(data)], seq_len=96)
    assert "default chat template" in default.summary()
    assert tokenizer.decode(default.train[0]["input_ids"]).startswith("<s>### User:\nHi")
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    custom = prepare_data(tokenizer, [str(data)], seq_len=96, chat_template=str(template))
    assert f"the file {template}" in custom.summary() and custom.chat_template == template.read_text()
    assert tokenizer.decode(custom.train[0]["input_ids"]).startswith("[user] Hi\n[assistant] Hello")
    answer = tokenizer.decode([i for i in custom.train[0]["labels"] if i != IGNORE_INDEX])
    assert answer.replace(" ", "") == "Hello\nSeeyou\n"


def test_truncation_is_counted_and_long_conversations_cut_at_the_end(tokenizer, tmp_path):
    long = [{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": "word " * 80}]
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}] * 20 + [{"messages": long}] * 4)
    prepared = prepare_data(tokenizer, [str(data)], seq_len=48)
    stats = prepared.train_stats
    assert stats.truncated >= 1 and stats.longest > 48 and "exceeded seq_len=48" in prepared.summary()
    assert max(prepared.train["length"]) == 48


def test_bundled_chat_task_is_multi_turn_chat():
    records, fmt = load_records(["bundled:chat"])
    assert fmt == "chat" and len(records) >= 500
    turns = [json.loads(m) for m in records["messages"]]
    assert max(sum(t["role"] == "assistant" for t in c) for c in turns) >= 6
    assert any(c[0]["role"] == "system" for c in turns)


# --- user errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
     r"record 2: turn 2 has role 'robot'; use one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
     r"record 2: turn 2 \(assistant\) has empty content"),
    ({"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]},
     r"record 2: the conversation has no assistant turn"),
    ({"messages": [{"role": "user", "content": "a"}, "hello"]}, r"record 2: turn 2 of messages is a JSON string"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
     r"record 2: turn 2 has from 'bot'; use one of system, human, user, gpt, assistant"),
])
def test_bad_turns_name_the_record(tmp_path, record, message):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]} \
        if "conversations" in record else {"messages": CONVERSATION}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(ValueError, match=f"bad.jsonl: {message}"):
        load_records([str(path)])


def test_messages_that_are_not_a_list_name_the_line_or_record(tmp_path):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": CONVERSATION}, {"messages": "hi there"}])
    with pytest.raises(ValueError, match=r"mixed.jsonl: malformed JSON, line 2: messages is a JSON str, not a list"):
        load_records([str(mixed)])
    text = write_jsonl(tmp_path / "text.jsonl", [{"messages": "hi there"}])
    with pytest.raises(ValueError, match=r"text.jsonl: malformed JSON, line 1: messages is a JSON str"):
        load_records([str(text)])


def test_template_that_does_not_render_names_the_file(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}] * 30)
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(ValueError, match=f"chat template from the file {broken} does not render"):
        prepare_data(tokenizer, [str(data)], seq_len=64, chat_template=str(broken))
    dropping = tmp_path / "dropping.jinja"
    dropping.write_text("{% for m in messages %}{{ m.role }}{% endfor %}")
    with pytest.raises(ValueError, match=f"the file {dropping} leaves out turn content"):
        prepare_data(tokenizer, [str(data)], seq_len=64, chat_template=str(dropping))
    with pytest.raises(FileNotFoundError, match="--chat_template .*missing.jinja: no such file"):
        prepare_data(tokenizer, [str(data)], seq_len=64, chat_template=str(tmp_path / "missing.jinja"))


def test_a_prompt_longer_than_seq_len_is_dropped_or_refused_on_request_naming_the_record(tokenizer, tmp_path):
    long_prompt = [{"role": "user", "content": "please " * 60}, {"role": "assistant", "content": "ok"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}] * 20 + [{"messages": long_prompt}])
    evaluation = [str(write_jsonl(tmp_path / "eval.jsonl", [{"messages": CONVERSATION}] * 2))]
    dropped = prepare_data(tokenizer, [str(path)], seq_len=40, eval_specs=evaluation)
    assert dropped.train_stats.dropped == 1 and len(dropped.train) == 20  # dropped and counted (the default)
    assert "dropped and counted (--too_long drop" in dropped.summary()
    with pytest.raises(ValueError, match=r"--too_long refuse: .*c.jsonl: record 21 has \d+ prompt tokens, which "
                                         r"leave no answer token within --seq_len 40"):
        prepare_data(tokenizer, [str(path)], seq_len=40, eval_specs=evaluation, too_long="refuse")


# --- through the CLI: exit 2, one line, before any model loads, nothing written -----------------------


@pytest.mark.parametrize("case", ["template", "role", "packing"])
def test_cli_reports_chat_errors_before_loading_the_model(tmp_path, capsys, monkeypatch, case):
    import transformers

    from loretta_ds.cli import main
    from loretta_ds.tiny_llama import ensure_tiny_llama

    ensure_tiny_llama()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("a model was loaded before the user error was reported"))
    records = [{"messages": CONVERSATION}] * 30
    args, expected = [], ""
    if case == "template":
        template = tmp_path / "bad.jinja"
        template.write_text("{% if %}")
        args, expected = ["--chat_template", str(template)], f"chat template from the file {template} does not render"
    elif case == "role":
        records = records + [{"messages": [{"role": "tool", "content": "x"}]}]
        expected = "record 31: turn 1 has role 'tool'"
    else:
        records = records + [{"messages": [{"role": "user", "content": "please " * 60},
                                           {"role": "assistant", "content": "ok"}]}] * 3
        args = ["--packing", "--seq_len", "48", "--too_long", "refuse"]
        expected = "prompt tokens, which leave no answer token within --seq_len 48"
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    out = tmp_path / "run"
    status = main(["train", "--dataset", str(data), "--output_dir", str(out), *args])
    err = capsys.readouterr().err
    assert status == 2 and err.count("error: ") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not out.exists()
