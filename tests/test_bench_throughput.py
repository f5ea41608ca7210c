"""benchmarks/throughput.sh's parts: the HF Trainer + PEFT LoRA contender (its padding and its per-step
records, and, marked multiprocess, a real 2-process ZeRO-3 run) and the report's arithmetic."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_support import clean_env, free_port

REPO = Path(__file__).resolve().parents[1]


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trainer_contenders_batches_pad_to_the_longest_and_count_real_tokens():
    collator = bench_module("hf_trainer_lora").PaddingCollator(pad_id=0)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert list(collator.real_tokens) == [4]


def write_run(root: Path, name: str, tokens_per_s: list[float], log: str = "") -> Path:
    run = root / name
    run.mkdir()
    records = [{"kind": "train", "step": step, "tokens_per_s": t, "step_time_s": 1000 / t}
               for step, t in enumerate(tokens_per_s, start=1)]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, [*records, {"kind": "eval", "step": 3}])) + "\n")
    Path(f"{run}.log").write_text(log)
    return run


def test_the_report_takes_medians_after_warm_up_and_ratios_within_each_repeat(tmp_path):
    report = bench_module("throughput_report")
    runs = [write_run(tmp_path, "rep-padded-1", [1, 100, 200, 300]),
            write_run(tmp_path, "rep-packed-1", [1, 400, 400, 500], log="x\npacking: 7 examples, efficiency 96.0%\n"),
            write_run(tmp_path, "hf-lora-1", [1, 100, 100, 100]),
            write_run(tmp_path, "rep-padded-2", [1, 100, 100, 100]),
            write_run(tmp_path, "rep-packed-2", [1, 300, 300, 300]),
            write_run(tmp_path, "hf-lora-2", [1, 200, 200, 200])]
    text = report.report(runs, warmup=1)
    assert "| rep-padded | 200, 100 | 5.000, 10.000 |" in text  # the warm-up step (1 token/s) is left out
    # packed/padded: 400/200 = 2x and 300/100 = 3x; packed/hf: 4x and 1.5x
    assert "| rep-packed / rep-padded | 2.50x | 2.00-3.00x (2 repeats) |" in text
    assert "| rep-packed / hf-lora | 2.75x | 1.50-4.00x (2 repeats) |" in text
    assert "lora-packed" not in text  # no such runs: no ratio
    assert "packed run log: packing: 7 examples, efficiency 96.0%" in text
    with pytest.raises(ValueError, match="no train step after the 9 warm-up steps"):
        report.report(runs, warmup=9)


@pytest.mark.multiprocess
def test_the_trainer_contender_runs_under_two_process_zero3_with_the_resolved_config(tmp_path):
    """Two steps of HF Trainer + PEFT LoRA under the deepspeed launcher, on the DeepSpeed config a
    loretta_ds LoRA run resolved: one record per step, its tokens/s its real tokens over its time."""
    from loretta_ds.tiny_llama import ensure_tiny_llama

    model = ensure_tiny_llama()
    launcher = shutil.which("deepspeed")
    head = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    common = ["--seq_len", "64", "--max_steps", "2"]
    lora = tmp_path / "lora"
    subprocess.run([*head, "--num_gpus", "2", "--master_port", str(free_port()), str(REPO / "launch" / "train.py"),
                    "--method", "lora", "--dataset", "bundled:chat", "--micro_batch_size", "2", "--grad_accum", "1",
                    "--eval_every", "0", "--eval_batches", "1", "--save_every", "0", "--export", "false",
                    "--output_dir", str(lora), *common], check=True, cwd=tmp_path, env=clean_env(),
                   capture_output=True, text=True, timeout=600)
    metrics = tmp_path / "hf" / "metrics.jsonl"
    done = subprocess.run([*head, "--num_gpus", "2", "--master_port", str(free_port()),
                           str(REPO / "benchmarks" / "hf_trainer_lora.py"), "--model", str(model), "--ds_config",
                           str(lora / "run_config.json"), "--metrics", str(metrics), *common],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    global_slots = 2 * 2 * 64  # ranks x micro batch x seq_len: real tokens can be at most this many
    for record in records:
        assert 0 < record["real_tokens"] <= global_slots
        assert record["tokens_per_s"] == pytest.approx(record["real_tokens"] / record["step_time_s"])
