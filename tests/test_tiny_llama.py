"""The built-in tiny-llama: built once per test module into tmp_path, loaded by plain transformers in
a process that never imports loretta_ds, tokenizer faithful to its SentencePiece model, cached,
deterministic and safe to create from two processes at once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from loretta_ds import tiny_llama
from loretta_ds.tiny_llama import (CACHE_ENV, MARKER_FILE, TINY_LLAMA_NAME, build_tiny_llama,
                                   ensure_tiny_llama, is_complete, is_current)

SAMPLE = "On Monday, Anna went to the park with Ben. The weather was sunny, so they walked."


def digests(directory: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cache root, model dir, build seconds): the real build, with the default pretraining."""
    root = tmp_path_factory.mktemp("cache")
    rng_before = torch.random.get_rng_state()
    started = time.perf_counter()
    path = ensure_tiny_llama(root)
    seconds = time.perf_counter() - started
    # Building must not move the caller's global RNG.
    assert torch.equal(rng_before, torch.random.get_rng_state())
    return root, path, seconds


@pytest.fixture(scope="module")
def cached():
    """The built-in model as every command gets it (the per-user cache; built once per machine)."""
    return ensure_tiny_llama()


@pytest.mark.slow
def test_build_writes_a_complete_llama_model_dir(built):
    root, path, _ = built
    assert path == root / "tiny-llama-v1" and is_current(path)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 2)
    assert config["intermediate_size"] % 2 == 0 and config["intermediate_size"] & (config["intermediate_size"] - 1)
    assert 1000 <= config["vocab_size"] <= 2000
    marker = json.loads((path / MARKER_FILE).read_text())
    assert marker["pretrain_steps"] == tiny_llama.PRETRAIN["steps"] and marker["final_train_loss"] < 2.0
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]  # staging dir renamed away


@pytest.mark.slow
def test_loads_with_plain_transformers_in_a_clean_process(built, tmp_path):
    _, path, _ = built
    script = textwrap.dedent(f"""
        import json, math, sys
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(path)!r})
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}).eval()
        ids = tokenizer({SAMPLE!r}, return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
            generated = model.generate(ids[:, :6], max_new_tokens=8, do_sample=False)
        print(json.dumps({{
            "imported": sorted(m for m in sys.modules if m.startswith("loretta_ds")),
            "tokenizer": type(tokenizer).__name__, "model": type(model).__name__,
            "ids": ids[0].tolist(), "loss": loss, "uniform_loss": math.log(len(tokenizer)),
            "generated": generated.shape[1],
            "specials": [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == []
    assert (report["tokenizer"], report["model"]) == ("LlamaTokenizer", "LlamaForCausalLM")
    assert report["specials"] == [0, 1, 2, 3]
    import sentencepiece as spm
    processor = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    assert report["ids"] == [1] + processor.encode(SAMPLE)
    # Pretraining made it a language model: far below the loss of a uniform guess.
    assert report["loss"] < 0.5 * report["uniform_loss"]
    assert report["generated"] == 14


# Text starting with whitespace is left out: there transformers' Metaspace adds no dummy prefix
# while SentencePiece does (the same holds for the original LLaMA-2 tokenizer).
@pytest.mark.parametrize("text", [
    SAMPLE, "Review: the hotel was  awful!\nAnswer: negative", "Double  spaces and a tab\t",
    "Numbers 12345 and 3.14", "Unicode: café, naïve, 日本語, emoji 🙂", "### Instruction:\nAdd.\n\n",
])
def test_tokenizer_round_trip_matches_sentencepiece(cached, text):
    path = cached
    from transformers import AutoTokenizer
    import sentencepiece as spm
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == processor.encode(text)
    assert tokenizer.decode(ids) == text
    with_specials = tokenizer(text)["input_ids"]
    assert with_specials[0] == tokenizer.bos_token_id and with_specials[1:] == ids


def test_label_words_are_single_tokens(cached):
    path = cached
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    for word in ("positive", "negative"):
        prompt = tokenizer("It was fine.\nAnswer:", add_special_tokens=False)["input_ids"]
        full = tokenizer(f"It was fine.\nAnswer: {word}", add_special_tokens=False)["input_ids"]
        assert full[:len(prompt)] == prompt and len(full) == len(prompt) + 1


@pytest.mark.slow
def test_second_call_is_cached(built):
    root, path, build_seconds = built
    before = digests(path)
    started = time.perf_counter()
    again = ensure_tiny_llama(root)
    assert again == path
    assert time.perf_counter() - started < min(1.0, build_seconds / 5)
    assert digests(path) == before


def test_every_command_resolves_the_builtin_name_to_the_cached_model(cached, monkeypatch):
    """train (weights) and count/estimate (shapes) take --model through one resolver: the built-in
    name is the cached directory for both, with the same config."""
    from loretta_ds.models import load_model_config, resolve_model

    path = cached
    root = path.parent
    monkeypatch.setenv(CACHE_ENV, str(root))
    loaded, config = resolve_model(TINY_LLAMA_NAME, weights=True)
    assert loaded == str(path)
    def shapes(cfg):  # the config less where it was read from
        return {k: v for k, v in cfg.to_dict().items() if k != "_name_or_path"}

    assert shapes(load_model_config(TINY_LLAMA_NAME)) == shapes(config)
    assert shapes(load_model_config(str(path))) == shapes(config)  # the directory itself: the same


def test_cache_env_sets_the_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert tiny_llama.tiny_llama_dir() == tmp_path / "tiny-llama-v1"
    monkeypatch.delenv(CACHE_ENV)
    assert tiny_llama.tiny_llama_dir() == Path.home() / ".cache" / "loretta_ds" / "tiny-llama-v1"


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    build_tiny_llama(first, pretrain_steps=3)
    build_tiny_llama(second, pretrain_steps=3)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer.model", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = tmp_path / "c"
    other.mkdir()
    build_tiny_llama(other, pretrain_steps=3, seed=1)
    assert (other / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_concurrent_creation_builds_once(tmp_path):
    # Two processes (like two ranks) ask for the model at the same moment on an empty cache.
    script = textwrap.dedent(f"""
        import loretta_ds.tiny_llama as t
        t.PRETRAIN["steps"] = 3  # a short build; the locking is what is tested
        print(t.ensure_tiny_llama({str(tmp_path)!r}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert paths == {str(tmp_path / "tiny-llama-v1")}
    assert sum("building tiny-llama" in err for _, err in outputs) == 1
    assert is_complete(tmp_path / "tiny-llama-v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny-llama-v1.lock", "tiny-llama-v1"]


def test_partial_directory_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setitem(tiny_llama.PRETRAIN, "steps", 3)
    broken = tmp_path / "tiny-llama-v1"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    path = ensure_tiny_llama(tmp_path)
    assert path == broken and is_current(path)
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"


def test_build_from_another_recipe_is_replaced(cached, tmp_path, monkeypatch):
    # A cache written by an older checkout (here: the full build, while this "version" pretrains
    # 3 steps) is complete but not current, so it is rebuilt rather than silently reused.
    import shutil
    path = cached
    stale = tmp_path / "tiny-llama-v1"
    shutil.copytree(path, stale)
    monkeypatch.setitem(tiny_llama.PRETRAIN, "steps", 3)
    assert is_complete(stale) and not is_current(stale)
    assert ensure_tiny_llama(tmp_path) == stale and is_current(stale)
    assert json.loads((stale / MARKER_FILE).read_text())["pretrain_steps"] == 3


def test_untuned_model_is_near_chance_on_the_bundled_task(cached):
    # The demo's starting point: pretraining taught language, not the classification task.
    path = cached
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from loretta_ds.data import classification_accuracy, load_records
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    records, _ = load_records(None, split="validation")
    accuracy = classification_accuracy(model, tokenizer, records, ["negative", "positive"],
                                       seq_len=128, batch_size=64)
    assert 0.35 <= accuracy <= 0.65
