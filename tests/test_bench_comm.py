"""Communication benchmark: the table maths, and (marked multiprocess) a real 2-process ZeRO-3 run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness.comm import _difference, comm_table, with_comms_logger

REPO = Path(__file__).resolve().parents[1]


def test_snapshot_difference_counts_only_the_measured_window():
    before = {"all_gather_into_tensor": {100: 3}, "reduce_scatter_tensor": {40: 1}}
    after = {"all_gather_into_tensor": {100: 7, 8: 2}, "reduce_scatter_tensor": {40: 3}, "barrier": {0: 1}}
    assert _difference(after, before) == {"all_gather_into_tensor": {"calls": 6, "bytes": 416},
                                          "reduce_scatter_tensor": {"calls": 2, "bytes": 80},
                                          "barrier": {"calls": 1, "bytes": 0}}


def _result(method, trainable, step_s):
    return {"method": method, "trainable_params": trainable, "reduce_bytes_per_step": 4 * trainable,
            "gather_bytes_per_step": 1000.0, "forward_s": 0.1, "backward_s": 0.2, "optimizer_step_s": 0.01,
            "step_s": step_s, "step_cpu_s": step_s / 2,
            "ops_per_step": {"reduce_scatter_tensor": {"calls": 1, "bytes": 4 * trainable}}}


def test_table_merges_repeats_and_compares_with_lora():
    table = comm_table([_result("rep", 100, 1.0), _result("lora", 1000, 2.0), _result("rep", 100, 3.0),
                        _result("lora", 1000, 2.0)])
    rep_line = next(line for line in table.splitlines() if line.startswith("| rep |"))
    assert "| 0.100x |" in rep_line  # gradient bytes: 10x fewer
    assert "| 2000 | 1.000x |" in rep_line  # median step of 1 s and 3 s, equal to LoRA's
    assert rep_line.rstrip().endswith("| 2 |")


def test_comms_logger_config(tmp_path):
    out = with_comms_logger(str(REPO / "ds_configs" / "zero3_offload.json"), str(tmp_path / "ds.json"))
    config = json.loads(Path(out).read_text())
    assert config["comms_logger"]["enabled"] and config["comms_logger"]["prof_all"]
    assert config["zero_optimization"]["stage"] == 3


@pytest.mark.multiprocess
def test_two_process_zero3_run_reports_gradient_bytes_in_proportion(tmp_path):
    if shutil.which("deepspeed") is None or shutil.which("bash") is None:
        pytest.skip("needs the deepspeed launcher and bash")
    env = dict(os.environ, PYTHON=sys.executable, WORK=str(tmp_path), HIDDEN="64", LAYERS="2",
               INTERMEDIATE="172", HEADS="4", MICRO_BATCH="2", SEQ_LEN="32", WARMUP="1", MEASURE="2",
               METHODS="rep lora", OUT=str(tmp_path / "comm.md"))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "comm.sh")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {m: json.loads((tmp_path / f"{m}-1" / "comm_rank0.json").read_text()) for m in ("rep", "lora")}
    for r in results.values():
        assert r["world_size"] == 2 and r["gather_bytes_per_step"] > 0
        # fp32 gradients of exactly the trainable parameters are reduce-scattered each step
        reduce_scatter = r["ops_per_step"]["reduce_scatter_tensor"]["bytes"]
        assert 4 * r["trainable_params"] <= reduce_scatter <= 4 * r["trainable_params"] + 4096
    assert results["rep"]["reduce_bytes_per_step"] < results["lora"]["reduce_bytes_per_step"]
    assert "| rep |" in (tmp_path / "comm.md").read_text()
