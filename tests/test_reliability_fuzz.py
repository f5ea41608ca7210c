"""Fuzzing the dataset readers: whatever a data file holds, loading it either works or raises one
of the documented errors (ValueError / FileNotFoundError) with a message. Nothing else may escape:
no KeyError, TypeError, UnicodeDecodeError, pyarrow or pandas exception, no hang.

The files are real files (random bytes, random JSON values as JSON lines or arrays, damaged valid
files, random CSV), loaded through loretta_ds.data's public loading functions, and once through
the whole data preparation (tokenization included) with the built-in model's tokenizer. The runs
are derandomized so CI is stable; raise max_examples locally to search further.
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loretta_ds.data import load_records, parse_dataset_specs, prepare_data
from loretta_ds.data.files import CANONICAL_COLUMNS

DOCUMENTED = (ValueError, FileNotFoundError)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Column names the formats look for, and a few they do not.
KEYS = st.sampled_from(["text", "label", "prompt", "completion", "instruction", "input", "output", "x", ""])
SCALARS = st.none() | st.booleans() | st.integers(-3, 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=30)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
RECORDS = st.dictionaries(KEYS, JSON_VALUES, max_size=5)
# Mostly well-formed records of each format, with the odd wrong value: these get past the first
# checks and exercise the later ones (labels, empty fields, tokenization).
TEXTS = st.text(max_size=40) | st.sampled_from(["", " ", "\n", "</s>", "<s>", "\x00", "é\u2028", "Answer:"])
PLAUSIBLE = st.one_of(
    st.fixed_dictionaries({"text": TEXTS, "label": st.sampled_from(["pos", "neg", "", " pos ", 0, 1, True, None])}),
    st.fixed_dictionaries({"prompt": TEXTS, "completion": TEXTS}),
    st.fixed_dictionaries({"instruction": TEXTS, "output": TEXTS}, optional={"input": TEXTS | st.none()}),
    st.fixed_dictionaries({"text": TEXTS}),
)


@pytest.fixture(scope="module", autouse=True)
def private_datasets_cache(tmp_path_factory):
    """`datasets` caches every file it reads: keep the fuzzed ones out of the user's cache."""
    import datasets

    saved = datasets.config.HF_DATASETS_CACHE, datasets.utils.logging.get_verbosity()
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("datasets-cache")
    # The loader reports each bad file in its error; the library's own log line would be noise.
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    yield
    datasets.config.HF_DATASETS_CACHE = saved[0]
    datasets.utils.logging.set_verbosity(saved[1])


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from loretta_ds.tiny_llama import ensure_tiny_llama

    return AutoTokenizer.from_pretrained(ensure_tiny_llama())


def load_file(name: str, content: bytes | str, fmt: str = "auto"):
    """load_records on a file with ``content``: the dataset, or None after a documented error."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(content)
        try:
            dataset, resolved = load_records([str(path)], fmt=fmt)
        except DOCUMENTED as err:
            assert str(err).strip(), f"{type(err).__name__} without a message"
            return None
    # Loaded: canonical records of text, whatever went in.
    assert tuple(dataset.column_names) == CANONICAL_COLUMNS
    for row in dataset:
        assert all(isinstance(row[c], str) for c in CANONICAL_COLUMNS), row
    return dataset


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_random_bytes(content, suffix):
    load_file("data" + suffix, content)


@FUZZ
@given(values=st.lists(JSON_VALUES | RECORDS, min_size=1, max_size=6), as_array=st.booleans(),
       fmt=st.sampled_from(["auto", "text", "prompt_completion", "instruction", "classification"]))
def test_random_json_values(values, as_array, fmt):
    content = json.dumps(values) if as_array else jsonl(values)
    load_file("data.json" if as_array else "data.jsonl", content, fmt)


@FUZZ
@given(records=st.lists(PLAUSIBLE, min_size=1, max_size=6), cut=st.integers(0, 10 ** 6),
       junk=st.text(max_size=3), damage=st.sampled_from(["none", "truncate", "insert", "bom", "crlf"]))
def test_damaged_json_lines(records, cut, junk, damage):
    content = jsonl(records)
    position = cut % (len(content) + 1)
    if damage == "truncate":
        content = content[:position]
    elif damage == "insert":
        content = content[:position] + junk + content[position:]
    elif damage == "bom":
        content = "\ufeff" + content
    elif damage == "crlf":
        content = content.replace("\n", "\r\n")
    load_file("data.jsonl", content)


@FUZZ
@given(header=st.lists(KEYS, min_size=1, max_size=4),
       rows=st.lists(st.lists(st.text(max_size=15) | st.integers() | st.none(), max_size=5), max_size=5),
       raw_tail=st.text(max_size=20))
def test_random_csv(header, rows, raw_tail):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    load_file("data.csv", buffer.getvalue() + raw_tail)


@FUZZ
@given(specs=st.lists(st.text(max_size=30) | st.sampled_from(["bundled:sentiment", "bundled:", "a.jsonl:0",
                                                                "a.jsonl:-1", "a.jsonl:nan", "x:1e999", ":",
                                                                "x" * 300, "dir/" + "y" * 300 + ".jsonl"]),
                      max_size=3))
def test_dataset_specs(specs):
    try:
        parse_dataset_specs(specs)
    except DOCUMENTED as err:
        assert str(err).strip()


@settings(FUZZ, max_examples=25)
@given(records=st.lists(PLAUSIBLE, min_size=1, max_size=8), seq_len=st.sampled_from([2, 3, 8, 64]))
def test_whole_preparation_with_tokenization(tokenizer, records, seq_len):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.jsonl"
        path.write_text(jsonl(records), encoding="utf-8", errors="surrogatepass")
        try:
            data = prepare_data(tokenizer, [str(path)], "auto", seq_len, seed=0)
        except DOCUMENTED as err:
            assert str(err).strip()
            return
    for example in data.train:
        assert 0 < len(example["input_ids"]) <= seq_len and len(example["labels"]) == len(example["input_ids"])
