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
