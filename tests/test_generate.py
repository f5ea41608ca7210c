"""`loretta-ds generate` on a run directory (base + adapter) and on its merged export."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loretta_ds import LorettaConfig, inject, save_adapter
from loretta_ds.commands.generate import generate, prompt_ids
from loretta_ds.export import export

from tiny_models import save_family_checkpoint

pytestmark = pytest.mark.slow  # a model export and generation in fresh processes

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["the film was", "a story about the sea"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loretta_ds.cli", "generate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def completions(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line)["completion"] for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def run_and_merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    save_family_checkpoint("smollm2", root / "base")
    model = inject(AutoModelForCausalLM.from_pretrained(root / "base"), LorettaConfig(target_modules="all"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "loretta_" in name:
                param.normal_(0, 0.5)
    save_adapter(model, root / "run" / "adapter")
    (root / "run" / "run_config.json").write_text(json.dumps(
        {"model": str(root / "base"), "method": "rep", "loretta": model.loretta_config.to_dict()}))
    export(root / "run", root / "merged", log=lambda message: None)
    return root


def test_generate_gives_the_same_greedy_text_on_a_run_and_on_its_merged_export(run_and_merged):
    root = run_and_merged
    args = [f"--prompt={p}" for p in PROMPTS] + ["--max_new_tokens", "12", "--json"]
    from_run = completions(cli(str(root / "run"), *args))
    from_merged = completions(cli(str(root / "merged"), *args))
    from_base = completions(cli(str(root / "base"), *args))
    assert len(from_run) == 2 and all(from_run)
    assert from_run == from_merged
    assert from_run != from_base  # the adapter is applied


def test_sampling_follows_the_seed_and_the_chat_template_is_used(run_and_merged):
    root = run_and_merged
    model = AutoModelForCausalLM.from_pretrained(root / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "merged")
    chat_ids = prompt_ids(tokenizer, PROMPTS[0])
    assert tokenizer.convert_ids_to_tokens(chat_ids)[:1] == ["<|im_start|>"]
    assert prompt_ids(tokenizer, PROMPTS[0], chat="false") == tokenizer(PROMPTS[0])["input_ids"]
    sampled = [generate(model, tokenizer, PROMPTS, 16, sample=True, temperature=1.5, seed=s) for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_generate_user_errors_exit_2_with_the_fix(run_and_merged, tmp_path):
    result = cli(str(tmp_path / "missing"), "--prompt", "hi")
    assert result.returncode == 2 and "OUTPUT_DIR or a model directory" in result.stderr
    result = cli(str(run_and_merged / "merged"), "--prompt", "hi", "--max_new_tokens", "0")
    assert result.returncode == 2 and "--max_new_tokens must be at least 1" in result.stderr


def test_eval_generate_logs_the_trained_models_greedy_completions(tmp_path):
    """--eval_generate N: at each evaluation the first N eval prompts are completed greedily by the
    model being trained, beside their references, into metrics.jsonl; the completions are what
    `generate` gives on the same model (the base at step 0, base + the saved adapter at the end)."""
    from loretta_ds import load_adapter
    from loretta_ds.generation import generation_config
    from loretta_ds.tiny_llama import ensure_tiny_llama
    from reliability_support import clean_env, metric_records

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--dataset", "bundled:instruct",
                           "--seq_len", "64", "--max_steps", "2", "--eval_every", "2", "--eval_batches", "1",
                           "--eval_generate", "2", "--save_every", "0", "--export", "false", "--lr", "0.05",
                           "--output_dir", str(out)], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = metric_records(out, "generation")
    assert [r["step"] for r in records] == [0, 2]
    assert all(len(r["samples"]) == 2 and all(s["prompt"] and s["reference"] for s in r["samples"])
               for r in records)

    base_dir = ensure_tiny_llama()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    def greedy(model, sample) -> str:
        ids = torch.tensor([sample["prompt_ids"]])
        config = generation_config(model, tokenizer, sample["max_new_tokens"])
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)

    # Two steps at this lr change what the model says: the second check is not the first one again.
    assert [s["output"] for s in records[0]["samples"]] != [s["output"] for s in records[1]["samples"]]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    assert [s["output"] for s in records[0]["samples"]] == [greedy(model, s) for s in records[0]["samples"]]
    load_adapter(model, out / "adapter")
    assert [s["output"] for s in records[1]["samples"]] == [greedy(model, s) for s in records[1]["samples"]]
