"""The data package: formats, answer-only labels, truncation, shuffling, sharding, resuming,
collation, label-word accuracy and every user error, on real files in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from loretta_ds.data import (BUNDLED_DIR, IGNORE_INDEX, ShardedBatches, bundled_path, classification_accuracy,
                             collate, eval_batches, label_word_scores, load_records,
                             parse_dataset_specs, prepare_data, tokenize_dataset)
from loretta_ds.data.formats import INSTRUCTION_WITH_INPUT_TEMPLATE, classification_prompt
from loretta_ds.tiny_llama import corpus_documents, hf_tokenizer_from_sentencepiece, train_sentencepiece
from tiny_models import tiny_llama_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    # The tiny-llama tokenizer alone (trained in well under a second), no model needed.
    return hf_tokenizer_from_sentencepiece(train_sentencepiece(corpus_documents()), 512)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def reviews(n: int, start: int = 0) -> list[dict]:
    return [{"text": f"Review number {i} was {'great' if i % 2 else 'awful'}.",
             "label": "positive" if i % 2 else "negative"} for i in range(start, start + n)]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode([i for i in ids if i != IGNORE_INDEX])


# --- specs and formats ----------------------------------------------------------------------------


def test_default_spec_is_bundled_classification():
    specs = parse_dataset_specs(None)
    assert [(s.source, s.kind, s.weight) for s in specs] == [("bundled:sentiment", "bundled", None)]
    records, fmt = load_records(None, split="validation")
    assert fmt == "classification"
    assert set(records["label"]) == {"positive", "negative"}
    assert len(records) == sum(1 for _ in bundled_path("sentiment", "validation").open())


def test_spec_weights_parse_and_paths_with_colons_stay_whole(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", reviews(4))
    b = write_jsonl(tmp_path / "b.jsonl", reviews(4))
    specs = parse_dataset_specs([f"{a}:0.7", f"{b}:0.3"])
    assert [(s.kind, s.weight) for s in specs] == [("file", 0.7), ("file", 0.3)]
    assert parse_dataset_specs(["bundled:instruct"])[0].source == "bundled:instruct"
    bare = parse_dataset_specs("sentiment:2," + str(a) + ":1")
    assert [(s.source, s.kind, s.weight) for s in bare] == [("bundled:sentiment", "bundled", 2.0),
                                                            (str(a), "file", 1.0)]


@pytest.mark.parametrize("records, expected", [
    ([{"text": "hello", "label": "x"}, {"text": "bye", "label": "y"}], "classification"),
    ([{"prompt": "2+2=", "completion": "4"}], "prompt_completion"),
    ([{"instruction": "Say hi.", "input": "", "output": "hi"}], "instruction"),
    ([{"instruction": "Say hi.", "output": "hi"}], "instruction"),
    ([{"text": "just text"}], "text"),
])
def test_auto_detects_format_from_columns(tmp_path, records, expected):
    path = write_jsonl(tmp_path / "d.jsonl", records)
    dataset, fmt = load_records([str(path)])
    assert fmt == expected
    assert set(dataset["format"]) == {expected}


def test_csv_and_parquet_files_load(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,label\n\"good, really\",positive\nbad,negative\n")
    dataset, fmt = load_records([str(csv_path)])
    assert fmt == "classification" and dataset["label"] == ["positive", "negative"]
    import datasets
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}]).to_parquet(str(parquet))
    assert load_records([str(parquet)])[1] == "prompt_completion"


def test_templates_render_prompt_and_answer(tmp_path):
    path = write_jsonl(tmp_path / "i.jsonl", [{"instruction": "Add.", "input": "1 and 2", "output": "3"}])
    dataset, _ = load_records([str(path)])
    assert dataset[0]["prompt"] == INSTRUCTION_WITH_INPUT_TEMPLATE.format(instruction="Add.", input="1 and 2")
    assert dataset[0]["completion"] == "3"
    path = write_jsonl(tmp_path / "c.jsonl", reviews(2))
    dataset, _ = load_records([str(path)])
    assert dataset[0]["prompt"] == classification_prompt(reviews(1)[0]["text"])
    assert dataset[0]["completion"] == " negative"


# --- tokenization: masking and truncation ------------------------------------------------------------


def tokenized(tokenizer, tmp_path, records, seq_len=256, fmt="auto"):
    path = write_jsonl(tmp_path / "t.jsonl", records)
    dataset, _ = load_records([str(path)], fmt=fmt)
    return tokenize_dataset(dataset, tokenizer, seq_len)


def test_classification_loss_covers_only_the_label_word(tokenizer, tmp_path):
    data, stats = tokenized(tokenizer, tmp_path, reviews(6))
    for example, record in zip(data, reviews(6)):
        ids, labels = example["input_ids"], example["labels"]
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert all(label != IGNORE_INDEX for label in labels[first:])  # the answer is the tail
        assert decode(tokenizer, labels).strip() == record["label"]
        assert tokenizer.decode(ids[:first], skip_special_tokens=True) == classification_prompt(record["text"])
        assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id
    assert stats.truncated == 0 and stats.examples == 6


def test_instruction_and_prompt_completion_answers_end_with_eos(tokenizer, tmp_path):
    data, _ = tokenized(tokenizer, tmp_path, [{"instruction": "Give the opposite.", "input": "hot",
                                              "output": "cold"}])
    labels = data[0]["labels"]
    assert labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=True) == "cold"
    data, _ = tokenized(tokenizer, tmp_path, [{"prompt": "The sky is", "completion": " blue"}])
    answer = [t for t in data[0]["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == "blue"
    assert len(answer) < len(data[0]["input_ids"]) - 2  # the prompt tokens are masked


def test_text_format_trains_on_every_token(tokenizer, tmp_path):
    data, _ = tokenized(tokenizer, tmp_path, [{"text": "On Monday, Anna went to the park."}])
    ids, labels = data[0]["input_ids"], data[0]["labels"]
    assert labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]


def test_truncation_is_counted_and_keeps_the_classification_answer(tokenizer, tmp_path):
    long_text = "The movie was great and the story was lovely. " * 20
    records = reviews(3) + [{"text": long_text, "label": "positive"},
                            {"text": long_text + "More.", "label": "negative"}]
    data, stats = tokenized(tokenizer, tmp_path, records, seq_len=32)
    assert (stats.examples, stats.truncated, stats.dropped) == (5, 2, 0)
    assert stats.longest > 32 and "2 of 5" in str(stats)
    for example, record in zip(data, records):
        assert len(example["input_ids"]) <= 32
        assert example["input_ids"][0] == tokenizer.bos_token_id
        assert decode(tokenizer, example["labels"]).strip() == record["label"]


def test_right_truncation_drops_examples_without_answer(tokenizer, tmp_path):
    records = [{"prompt": "word " * 50, "completion": " end"}, {"prompt": "short", "completion": " end"},
               {"text": "x"}]
    path = write_jsonl(tmp_path / "p.jsonl", records[:2])
    dataset, _ = load_records([str(path)])
    data, stats = tokenize_dataset(dataset, tokenizer, 16)
    assert (stats.truncated, stats.dropped, len(data)) == (1, 1, 1)
    text_data, text_stats = tokenized(tokenizer, tmp_path, [{"text": "word " * 50}], seq_len=16)
    assert text_stats.truncated == 1 and len(text_data[0]["input_ids"]) == 16


# --- batches: shuffling, sharding, resuming, collation -----------------------------------------------


def toy_examples(n: int) -> list[dict]:
    # Example i is recognisable from its first token.
    return [{"input_ids": [i] + [7] * (i % 3), "labels": [IGNORE_INDEX] + [7] * (i % 3)} for i in range(n)]


def first_tokens(batch: dict) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def test_shuffle_is_deterministic_by_seed():
    def order(seed):
        return [first_tokens(b) for b in ShardedBatches(toy_examples(40), 4, seed=seed)]
    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(sum(order(1), [])) == list(range(40))
    loader = ShardedBatches(toy_examples(40), 4, seed=1)
    epochs = [sum((first_tokens(b) for b in loader), []) for _ in range(2)]
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])


def test_two_ranks_partition_each_epoch():
    loaders = [ShardedBatches(toy_examples(43), 4, rank=r, world_size=2, seed=3) for r in range(2)]
    seen = [[first_tokens(b) for b in loader] for loader in loaders]
    assert len(seen[0]) == len(seen[1]) == 43 // 8
    flat = [sum(s, []) for s in seen]
    assert not set(flat[0]) & set(flat[1])
    # Together the ranks consumed exactly the first steps * 8 entries of the epoch permutation.
    assert set(flat[0]) | set(flat[1]) == set(loaders[0].epoch_order(0)[:40].tolist())


def test_resume_gives_the_same_following_batches():
    dataset = toy_examples(30)
    reference = ShardedBatches(dataset, 4, rank=1, world_size=2, seed=5)
    stream = reference.forever()
    for _ in range(5):  # crosses the epoch boundary (3 steps per epoch)
        next(stream)
    state = json.loads(json.dumps(reference.state_dict()))
    expected = [next(stream)["input_ids"] for _ in range(4)]
    resumed = ShardedBatches(dataset, 4, rank=1, world_size=2, seed=5)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.batch_index) == (1, 2)
    got = [b["input_ids"] for _, b in zip(range(4), resumed.forever())]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_resume_on_another_world_size_continues_the_same_permutation():
    dataset = toy_examples(48)
    two = [ShardedBatches(dataset, 2, rank=r, world_size=2, seed=0) for r in range(2)]
    streams = [iter(loader) for loader in two]
    for stream in streams:
        for _ in range(2):
            next(stream)  # 2 steps x 4 examples = 8 consumed
    one = ShardedBatches(dataset, 4, seed=0)
    one.load_state_dict(two[0].state_dict())
    assert first_tokens(next(iter(one))) == one.epoch_order(0)[8:12].tolist()
    with pytest.raises(ValueError, match="seed"):
        ShardedBatches(dataset, 4, seed=9).load_state_dict(two[0].state_dict())
    with pytest.raises(ValueError, match="whole number of steps"):
        ShardedBatches(dataset, 3, seed=0).load_state_dict(
            {**two[0].state_dict(), "batch_index": 1})


def test_collate_pads_with_mask_and_ignored_labels():
    batch = collate([{"input_ids": [1, 5, 6], "labels": [-100, 5, 6]}, {"input_ids": [1, 9], "labels": [-100, 9]}],
                    pad_id=3, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 3], [1, 9, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100], [-100, 9, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_eval_batches_cover_all_examples_with_equal_counts():
    dataset = toy_examples(7)
    per_rank = [list(eval_batches(dataset, 2, pad_id=99, rank=r, world_size=3)) for r in range(3)]
    assert len({len(batches) for batches in per_rank}) == 1
    real, fillers = [], 0
    for batches in per_rank:
        for batch in batches:
            for row in batch["input_ids"][:, 0].tolist():
                if row == 99:
                    fillers += 1
                else:
                    real.append(row)
            filler_rows = batch["input_ids"][:, 0] == 99
            assert (batch["labels"][filler_rows] == IGNORE_INDEX).all()
    assert sorted(real) == list(range(7))
    assert fillers == 3 * 3 - 7  # each rank yields ceil(7 / 3) = 3 rows


def test_too_small_dataset_for_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="lower the micro batch size"):
        ShardedBatches(toy_examples(5), 4, rank=0, world_size=2)


# --- prepare_data: splits, mixing, label set ---------------------------------------------------------


def test_prepare_bundled_default(tokenizer):
    data = prepare_data(tokenizer, seq_len=128)
    assert data.format == "classification" and data.label_words == ["negative", "positive"]
    assert len(data.train) == 1600 and len(data.eval) == len(data.eval_records) == 200
    assert data.sources[0].eval_origin == "validation split"
    assert data.pad_id == tokenizer.pad_token_id
    assert "1600 train" in data.summary()


def test_single_file_gets_a_held_out_eval_split(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", reviews(40))
    data = prepare_data(tokenizer, [str(path)], seq_len=64, eval_fraction=0.1, seed=1)
    assert (len(data.train), len(data.eval)) == (36, 4)
    texts = set(data.eval_records["prompt"])
    again = prepare_data(tokenizer, [str(path)], seq_len=64, eval_fraction=0.1, seed=1)
    assert set(again.eval_records["prompt"]) == texts


def test_mixing_weights_set_each_share(tokenizer, tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", [{"prompt": f"q{i}", "completion": " a"} for i in range(10)])
    big = write_jsonl(tmp_path / "big.jsonl", [{"prompt": f"p{i}", "completion": " b"} for i in range(30)])
    mixed, fmt = load_records([f"{small}:1", f"{big}:1"], seed=0)
    assert fmt == "prompt_completion" and len(mixed) == 40
    sources = mixed["source"]
    assert sources.count(str(small)) == 20 and sources.count(str(big)) == 20
    assert load_records([f"{small}:1", f"{big}:1"], seed=0)[0]["prompt"] == mixed["prompt"]
    plain, _ = load_records([str(small), str(big)])
    assert plain["source"].count(str(small)) == 10


def test_mixed_formats_report_mixed(tokenizer, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", reviews(20))
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"Plain text {i}."} for i in range(20)])
    data = prepare_data(tokenizer, [str(a), str(b)], seq_len=64)
    assert data.format == "mixed" and data.label_words == ["negative", "positive"]
    assert set(data.classification_eval_records["format"]) == {"classification"}


def test_integer_labels_use_label_words(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "int.jsonl", [{"text": "nice", "label": 1}, {"text": "bad", "label": 0}] * 5)
    data = prepare_data(tokenizer, [str(path)], seq_len=32, label_words=["negative", "positive"])
    assert data.label_words == ["negative", "positive"]
    records, _ = load_records([str(path)], label_words=["negative", "positive"])
    assert records["label"][:2] == ["positive", "negative"]
    assert records["completion"][:2] == [" positive", " negative"]


# --- label-word accuracy -------------------------------------------------------------------------------


class Wrapped(torch.nn.Module):
    """A stand-in for an engine wrapper: forwards keyword arguments to the real model."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


def manual_scores(model, tokenizer, prompt: str, words: list[str]) -> list[float]:
    # Independent re-derivation: mean log-probability of the word's tokens, one sequence at a time.
    scores = []
    for word in words:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + " " + word, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[tokenizer.bos_token_id] + full_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = 1 + len(prompt_ids)
        tokens = [log_probs[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1])]
        scores.append(sum(tokens) / len(tokens))
    return scores


def test_label_word_scores_match_a_direct_computation(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab=len(tokenizer))).eval()
    prompts = [classification_prompt(r["text"]) for r in reviews(5)]
    words = ["negative", "positive", "not sure"]  # the last is several tokens
    scores = label_word_scores(model, tokenizer, prompts, words, seq_len=128, batch_size=4)
    expected = torch.tensor([manual_scores(model, tokenizer, p, words) for p in prompts])
    assert scores.shape == (5, 3)
    assert torch.allclose(scores, expected, atol=1e-4)


def test_classification_accuracy_counts_argmax_matches_through_a_wrapper(tokenizer):
    torch.manual_seed(1)
    model = Wrapped(LlamaForCausalLM(tiny_llama_config(vocab=len(tokenizer)))).train()
    records = reviews(12)
    words = ["negative", "positive"]
    scores = label_word_scores(model, tokenizer, [classification_prompt(r["text"]) for r in records], words, 128)
    predicted = [words[i] for i in scores.argmax(1).tolist()]
    expected = sum(p == r["label"] for p, r in zip(predicted, records)) / len(records)
    accuracy = classification_accuracy(model, tokenizer, records, words, seq_len=128, batch_size=5)
    flipped = [{**r, "label": words[1 - words.index(r["label"])]} for r in records]
    assert accuracy == pytest.approx(expected)
    assert classification_accuracy(model, tokenizer, flipped, words, 128) == pytest.approx(1 - expected)
    assert model.training  # the caller's mode is restored
    with pytest.raises(ValueError, match="'maybe'.*label set"):
        classification_accuracy(model, tokenizer, [{"text": "x", "label": "maybe"}], words, 128)


def test_rank_shares_of_the_label_word_hits_add_up_to_the_whole_accuracy(tokenizer):
    """The trainer's eval splits the prompts over ranks: every rank scores as many prompts (ZeRO-3
    forwards are collective) and the padding repeats are not counted, so summed shares give the
    accuracy over all records, for a count that does not divide by the world size too."""
    from loretta_ds.data.evaluation import sharded_label_word_hits

    torch.manual_seed(2)
    model = LlamaForCausalLM(tiny_llama_config(vocab=len(tokenizer))).eval()
    records, words = reviews(11), ["negative", "positive"]
    whole = classification_accuracy(model, tokenizer, records, words, seq_len=128)
    for world_size in (1, 3, 4):
        shares = [sharded_label_word_hits(model, tokenizer, records, words, 128, 4, rank, world_size)
                  for rank in range(world_size)]
        assert sum(c for c, _ in shares) / sum(n for _, n in shares) == pytest.approx(whole)
        assert [n for _, n in shares] == [len(range(r, 11, world_size)) for r in range(world_size)]
    correct, counted = sharded_label_word_hits(model, tokenizer, records, words, 128, 4, 0, 1, limit=5)
    assert counted == 5 and correct == round(5 * classification_accuracy(model, tokenizer, records[:5], words, 128))


# --- user errors: raised early, naming the file / line / fix -----------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*does not exist"):
        parse_dataset_specs([str(missing)])


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"\n{"text": "c", "label": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: malformed JSON, line 3"):
        load_records([str(path)])


def test_malformed_json_array_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a", "label": "x"},\n  {"text": "b" "label": "y"}\n]\n')
    with pytest.raises(ValueError, match=r"bad\.json: malformed JSON, line 3"):
        load_records([str(path)])


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n["text", "b"]\n')
    with pytest.raises(ValueError, match=r"list\.jsonl.*line 2 is a JSON list"):
        load_records([str(path)])


def test_empty_file_and_empty_dataset(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        load_records([str(empty)])
    no_records = tmp_path / "none.json"
    no_records.write_text("[]")
    with pytest.raises(ValueError, match="none.json"):
        load_records([str(no_records)])


def test_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", reviews(2))
    with pytest.raises(ValueError, match="unknown data format 'dialogue'.*classification, chat"):
        load_records([str(path)], fmt="dialogue")


def test_columns_that_do_not_fit_the_format(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"qa\.jsonl: cannot detect.*\['answer', 'question'\]"):
        load_records([str(path)])
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(ValueError, match=r"pc\.jsonl: format 'instruction' needs.*'instruction'"):
        load_records([str(path)], fmt="instruction")


def test_non_text_field_names_record(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": "ok", "label": "x"}, {"text": None, "label": "y"}])
    with pytest.raises(ValueError, match=r"n\.jsonl: record 2 has text=None"):
        load_records([str(path)])


def test_eval_label_outside_train_label_set(tokenizer, tmp_path):
    root = tmp_path / "task"
    root.mkdir()
    write_jsonl(root / "train.jsonl", reviews(10))
    write_jsonl(root / "validation.jsonl", reviews(3) + [{"text": "meh", "label": "neutral"}])
    with pytest.raises(ValueError, match=r"validation\.jsonl: record 4 has label 'neutral'.*\['negative', 'positive'\]"):
        prepare_data(tokenizer, [str(root)], seq_len=32)


def test_label_not_in_given_label_words(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", reviews(4))
    with pytest.raises(ValueError, match=r"label 'negative'.*\['good', 'positive'\]"):
        load_records([str(path)], label_words=["good", "positive"])


def test_integer_labels_without_label_words(tmp_path):
    path = write_jsonl(tmp_path / "int.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    with pytest.raises(ValueError, match="int.jsonl: labels are integers.*write each label as its word"):
        load_records([str(path)])


@pytest.mark.parametrize("weight", ["0", "-1", "nan", "inf"])
def test_bad_mixing_weight(tmp_path, weight):
    path = write_jsonl(tmp_path / "d.jsonl", reviews(2))
    with pytest.raises(ValueError, match=f"mixing weight '{weight}' must be a positive"):
        parse_dataset_specs([f"{path}:{weight}"])


def test_weight_that_is_not_a_number_and_partial_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", reviews(2))
    with pytest.raises(FileNotFoundError, match="mixing weight goes last"):
        parse_dataset_specs([f"{a}:lots"])
    with pytest.raises(ValueError, match="every dataset spec or to none"):
        parse_dataset_specs([f"{a}:0.5", str(a)])


def test_unknown_bundled_name_and_unsupported_file():
    with pytest.raises(ValueError, match="bundled:sentiment"):
        parse_dataset_specs(["bundled:nope"])
    with pytest.raises(ValueError, match="unsupported file type"):
        parse_dataset_specs([__file__])


def test_single_label_classification_is_rejected(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"text": f"t{i}", "label": "yes"} for i in range(10)])
    with pytest.raises(ValueError, match="single label 'yes'"):
        prepare_data(tokenizer, [str(path)], seq_len=32)


# --- the bundled files -------------------------------------------------------------------------------


def test_bundled_files_regenerate_identically(tmp_path):
    # The generator is a development script (scripts/), run here as a user of the checkout would.
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_bundled_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    written = sorted(p for p in tmp_path.iterdir() if p.is_file())
    assert {p.name for p in written} == {p.name for p in BUNDLED_DIR.iterdir() if p.is_file()}
    for path in written:
        assert path.read_bytes() == (BUNDLED_DIR / path.name).read_bytes(), path.name
    total = sum(p.stat().st_size for p in written)
    assert total < 1_000_000


def test_bundled_tasks_have_the_expected_shape():
    train = [json.loads(line) for line in bundled_path("sentiment", "train").open()]
    validation = [json.loads(line) for line in bundled_path("sentiment", "validation").open()]
    assert 1000 <= len(train) <= 2000 and 150 <= len(validation) <= 250
    assert {r["label"] for r in train} == {"positive", "negative"}
    assert abs(sum(r["label"] == "positive" for r in validation) - len(validation) / 2) <= 1
    assert not {r["text"] for r in train} & {r["text"] for r in validation}
    instruct, fmt = load_records(["bundled:instruct"], split="validation")
    assert fmt == "instruction" and len(instruct) > 50
