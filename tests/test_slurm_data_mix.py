"""Weighted multi-task DATA through a real sbatch job: slurm/_launch.sh splits DATA into one
--dataset argument per spec, so the trainer mixes every task with its weight.

Needs the local cluster of .ci/slurm_cluster.sh and LORETTA_SLURM=1 (see test_slurm_cluster.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_slurm_cluster import _SKIP, completed, sbatch, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP))]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_weighted_data_specs_separated_by_comma_and_space_all_train(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews.jsonl", [
        {"text": f"Review {i} was {'great' if i % 2 else 'awful'}.", "label": "positive" if i % 2 else "negative"}
        for i in range(60)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": f"Add {i} and {i + 1}."},
                      {"role": "assistant", "content": str(2 * i + 1)}]} for i in range(40)])
    shared = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}"}]}
        for i in range(20)])
    specs = [f"{reviews}:0.6", f"{chats}:0.3", f"{shared}:0.1"]
    out_dir, log = tmp_path / "run", tmp_path / "job.log"
    job = sbatch("tiny_cpu.sh", log, OUTPUT_DIR=str(out_dir), DATA=f"{specs[0]},{specs[1]} {specs[2]}",
                 EXTRA_ARGS="--max_steps 3 --eval_every 0 --eval_batches 1 --export false")
    info = wait_job(job, completed, "completion", log)
    assert info["ExitCode"] == "0:0"

    text = log.read_text(errors="replace")  # two ranks may interleave the bytes of a character
    config = json.loads((out_dir / "run_config.json").read_text())
    assert config["train"]["dataset"] == specs
    # Each source trained on with its share: 57 + 38 + 19 = 114 records after the 5% held out
    # of each file, mixed to round(w / sum(w) * 114).
    assert f"{reviews} [classification]: 57 train (mixed to 68)" in text, text[-3000:]
    assert f"{chats} [chat]: 38 train (mixed to 34)" in text
    assert f"{shared} [chat]: 19 train (mixed to 11)" in text
    assert "data format mixed" in text
    assert (out_dir / "adapter" / "adapter.safetensors").is_file()
