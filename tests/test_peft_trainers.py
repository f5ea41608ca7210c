"""LoRETTA through other trainers, for real: HF Trainer + a DeepSpeed ZeRO-3 JSON on two processes
(the deepspeed launcher; checkpoint, resume), TRL's SFTTrainer(peft_config=...) on chat data, and
a fresh process that only imports loretta_ds to register the method before PeftModel.from_pretrained.
What they write reloads in PEFT, merges, and exports / generates through loretta-ds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loretta_ds.adapters.peft_export import PEFT_PREFIX as PEFT_KEY_PREFIX

REPO = Path(__file__).resolve().parents[1]
CHAT_DATA = REPO / "loretta_ds" / "data" / "bundled" / "chat_train.jsonl"
PROMPT = torch.tensor([[1, 15, 27, 31, 8, 90, 44, 3, 12, 60]])


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def tiny_base() -> Path:
    from loretta_ds.tiny_llama import ensure_tiny_llama

    return Path(ensure_tiny_llama())


def base_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def reload_in_fresh_process(base: Path, adapter: Path, out: Path) -> torch.Tensor:
    """Logits of base + adapter in a new interpreter that imports loretta_ds only to register."""
    script = (
        "import sys, torch\n"
        # this process's thread count: another one sums the matmuls in another order (~1e-6 apart)
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "import loretta_ds\n"
        "loretta_ds.register_peft()\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n"
        f"base = AutoModelForCausalLM.from_pretrained({str(base)!r}, dtype=torch.float32)\n"
        f"model = PeftModel.from_pretrained(base, {str(adapter)!r}).eval()\n"
        f"ids = torch.tensor({PROMPT.tolist()})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(input_ids=ids).logits.float(), {str(out)!r})\n"
        "print(type(model.peft_config['default']).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] in ("LorettaRepConfig", "LorettaAdpConfig")
    return torch.load(out)


@pytest.mark.slow
def test_fresh_process_loads_a_trainer_written_adapter_and_imports_no_deepspeed(tmp_path):
    """save_adapter's directory (what `loretta-ds train` writes) loads with PeftModel.from_pretrained
    in a process that imports loretta_ds only to register; the integration never imports DeepSpeed."""
    from tiny_models import randomize_adapter

    from loretta_ds import LorettaConfig, inject, save_adapter

    base = tiny_base()
    own = inject(base_model(base), LorettaConfig(method="rep", target_modules="all"))
    randomize_adapter(own, scale=0.2)
    save_adapter(own, tmp_path / "adapter")
    fresh = reload_in_fresh_process(base, tmp_path / "adapter", tmp_path / "logits.pt")
    torch.testing.assert_close(fresh, logits(own), rtol=0, atol=1e-6)

    blocked = (
        "import sys\n"
        "sys.modules['deepspeed'] = None  # as if not installed: import fails, find_spec says None\n"
        "import torch, loretta_ds\n"
        "from peft import get_peft_model, PeftModel\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,\n"
        "    num_attention_heads=2, vocab_size=64))\n"
        "peft_model = get_peft_model(model, loretta_ds.LorettaRepConfig(task_type='CAUSAL_LM'))\n"
        f"peft_model.save_pretrained({str(tmp_path / 'nods')!r})\n"
        "assert [m for m in sys.modules if m.startswith('deepspeed')] == ['deepspeed']\n"
        "print('ok', type(peft_model.base_model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok LorettaModel")


@pytest.mark.multiprocess
def test_hf_trainer_zero3_two_processes_checkpoint_resume_reload_merge(tmp_path):
    """HF Trainer + PEFT-LoRETTA rep + a ZeRO-3 JSON on 2 ranks (deepspeed launcher): adapter-only
    checkpoints, a resumed run that continues from step 2 to the same weights as an uninterrupted
    one, and an adapter that reloads in PEFT, merges, and exports with loretta-ds."""
    base = tiny_base()
    ds_config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 4,
                 "gradient_clipping": 1.0,
                 "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                                           "weight_decay": 0.0, "torch_adam": True}},
                 "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}
    (tmp_path / "zero3.json").write_text(json.dumps(ds_config))

    def launch(port: int, out: str, steps: int, *extra: str) -> None:
        command = ["deepspeed", "--num_gpus", "2", "--master_port", str(port),
                   str(REPO / "benchmarks" / "hf_trainer_lora.py"), "--model", str(base), "--method", "rep",
                   "--ds_config", str(tmp_path / "zero3.json"), "--seq_len", "64", "--max_steps", str(steps),
                   "--metrics", str(tmp_path / out / "metrics.jsonl"), "--output_dir", str(tmp_path / out / "trainer"),
                   "--adapter_out", str(tmp_path / out / "adapter"), *extra]
        done = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=900, cwd=tmp_path)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    launch(29941, "full", 4, "--save_steps", "2")
    checkpoint = tmp_path / "full" / "trainer" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json"} <= files
    assert "model.safetensors" not in files  # adapter-only: no base weights in the checkpoint
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert any(".loretta_A.tt_cores" in k for k in saved) and any("norm" in k for k in saved)
    assert all(k.startswith(PEFT_KEY_PREFIX) for k in saved)

    # resume: steps 3-4 from checkpoint-2 in a new launch give the uninterrupted run's adapter
    import shutil

    shutil.copytree(tmp_path / "full" / "trainer" / "checkpoint-2", tmp_path / "resumed" / "trainer" / "checkpoint-2")
    launch(29942, "resumed", 4, "--save_steps", "2", "--resume", "true")
    full = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    at_step_2 = load_file(checkpoint / "adapter_model.safetensors")
    assert any(not torch.equal(full[k], at_step_2[k]) for k in full)  # steps 3-4 did train
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6)

    from peft import PeftModel

    from loretta_ds import register_peft

    register_peft()  # this process has created no LoRETTA config: PEFT must learn the method first
    peft_model = PeftModel.from_pretrained(base_model(base), tmp_path / "full" / "adapter").eval()
    adapted = logits(peft_model)
    assert not torch.allclose(adapted, logits(base_model(base)), atol=1e-4)
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(logits(merged), adapted, rtol=0, atol=1e-5)
    from loretta_ds.export import export

    export(None, tmp_path / "merged", format="merged", adapter=tmp_path / "full" / "adapter", base=str(base),
           log=lambda _: None)
    torch.testing.assert_close(logits(base_model(tmp_path / "merged")), adapted, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_trl_sft_trainer_trains_loretta_and_the_adapter_runs_in_loretta_ds(tmp_path):
    """SFTTrainer(peft_config=LorettaRepConfig(...)) on the bundled chat data; the saved adapter
    reloads in PEFT, merges, and exports (merged, peft-lora) for `loretta-ds generate`."""
    from datasets import load_dataset
    from peft import PeftModel
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from loretta_ds import LorettaRepConfig
    from loretta_ds.data.chat import DEFAULT_CHAT_TEMPLATE

    base = tiny_base()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # a base model's tokenizer has none
    data = load_dataset("json", data_files=str(CHAT_DATA), split="train").select(range(24))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=6, per_device_train_batch_size=4,
                     learning_rate=3e-3, max_length=96, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, bf16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    # bf16=False: SFTConfig defaults to bf16 autocast, which accelerate keeps on the model's forward
    trainer = SFTTrainer(model=str(base), args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=LorettaRepConfig(task_type="CAUSAL_LM", init="zero"))
    model = trainer.model
    assert type(model).__name__ == "PeftModelForCausalLM"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("loretta_A" in n for n in trainable) and any("norm" in n for n in trainable)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0]
    trainer.save_model(str(tmp_path / "adapter"))

    model.eval()
    trained = logits(model.cpu().float())
    assert not torch.allclose(trained, logits(base_model(base)), atol=1e-4)
    reloaded = PeftModel.from_pretrained(base_model(base), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded), trained, rtol=0, atol=1e-6)

    for fmt in ("merged", "peft-lora"):
        done = subprocess.run([sys.executable, "-m", "loretta_ds.cli", "export", "--adapter", str(tmp_path / "adapter"),
                               "--base", str(base), "--format", fmt, str(tmp_path / fmt)],
                              capture_output=True, text=True, env=env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(logits(base_model(tmp_path / "merged")), trained, rtol=0, atol=1e-5)
    lora = PeftModel.from_pretrained(base_model(base), tmp_path / "peft-lora").eval()
    torch.testing.assert_close(logits(lora), trained, rtol=0, atol=1e-5)

    prompt = "Add the two numbers.\n2 and 3"
    generated = subprocess.run([sys.executable, "-m", "loretta_ds.cli", "generate", str(tmp_path / "merged"),
                                "--prompt", prompt, "--max_new_tokens", "6", "--json"],
                               capture_output=True, text=True, env=env(), timeout=300)
    assert generated.returncode == 0, generated.stderr[-3000:]
    # the merged export generates what the trained PEFT model generates (greedy, same tokenizer)
    from loretta_ds.commands.generate import generate

    expected = generate(model, AutoTokenizer.from_pretrained(tmp_path / "merged"), [prompt], max_new_tokens=6)
    assert json.loads(generated.stdout.strip().splitlines()[-1])["completion"] == expected[0]
