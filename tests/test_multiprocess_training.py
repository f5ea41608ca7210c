"""Real training runs: the deepspeed launcher with 2 CPU processes (gloo), ZeRO-3 with CPU offload.

One straight 20-step run is the reference for the other runs of this module: a 1-process run with
the same global batch, and a run preempted by SIGUSR1 and resumed. Each rank uses one thread so
that two ranks share two cores.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from loretta_ds import PREEMPTED_EXIT_CODE
from reliability_support import metric_records

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "launch" / "train.py")
ZERO3_OFFLOAD = str(ROOT / "ds_configs" / "zero3_offload.json")
# 20 steps of the built-in model on the bundled task; global batch 16 (2 x 8, or 1 x 16).
SHORT_RUN = ["--ds_config", ZERO3_OFFLOAD, "--max_steps", "20", "--save_every", "10", "--eval_every", "10",
             "--eval_batches", "2", "--export", "false", "--seed", "0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(threads: int) -> dict:
    values = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    values.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return values


def deepspeed_command(*args: str) -> list[str]:
    # On the CPU accelerator `--num_gpus N` starts N ranks; a free port keeps concurrent jobs apart.
    return ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN, *args]


def run(command: list[str], threads: int, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env(threads), capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess, status: int = 0) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-4000:]
    return output


def metrics(out: Path, kind: str = "train") -> list[dict]:
    return metric_records(out, kind)


def adapter(out: Path) -> dict:
    return load_file(str(out / "adapter" / "adapter.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def tiny_llama_dir() -> Path:
    from loretta_ds.tiny_llama import ensure_tiny_llama

    return ensure_tiny_llama()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_llama_dir) -> tuple[Path, str]:
    """2 processes, ZeRO-3 + CPU offload, 20 steps, frozen weights verified against the model dir."""
    out = tmp_path_factory.mktemp("straight") / "run"
    output = check(run(deepspeed_command(*SHORT_RUN, "--output_dir", str(out), "--verify_frozen"), threads=1))
    return out, output


def test_two_process_zero3_offload_run(straight, tiny_llama_dir):
    out, output = straight
    train = metrics(out)
    assert [r["step"] for r in train] == list(range(1, 21))
    assert not any(r["skipped"] for r in train)
    first, last = sum(r["loss"] for r in train[:3]) / 3, sum(r["loss"] for r in train[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    evals = metrics(out, "eval")
    assert [r["step"] for r in evals] == [0, 10, 20] and evals[-1]["loss"] < evals[0]["loss"]
    assert all(key in train[-1] for key in ("lr", "tokens_per_s", "step_time_s", "rss_mb"))

    report = json.loads((out / "param_report.json").read_text())
    assert report["zero_stage"] == 3 and report["world_size"] == 2
    # Every frozen tensor is partitioned (each rank holds about half of it); every trainable one
    # (TT cores, norms) is persistent, whole on every rank.
    assert report["frozen"]["tensors"] == report["partitioned"]["tensors"] == report["frozen_partitioned_tensors"] > 0
    assert report["partitioned"]["local_bytes"] <= 0.51 * 4 * report["partitioned"]["numel"]
    assert report["trainable"]["tensors"] == report["persistent"]["tensors"] > 0
    assert report["trainable_whole_on_every_rank"] is True
    assert report["optimizer_numel_this_rank"] < report["trainable"]["numel"]  # a partition of the trainable set
    # 2 layers x 7 projections + embedding + head partitioned; persistent: 2 layers x (q, v) x
    # (A, B), one tensor per TT matrix, + 5 norms.
    assert "partitioned 16 tensors" in output and "persistent (whole on every rank) 13 tensors" in output
    # The frozen base, gathered after training, equals the model directory's safetensors bit for bit.
    frozen = report["frozen_verify"]
    assert frozen["checked"] == report["frozen"]["tensors"] and frozen["mismatched"] == []

    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["model"] == str(tiny_llama_dir) and run_config["method"] == "rep"
    assert run_config["loretta"]["target_modules"] == ["q_proj", "v_proj"]
    assert run_config["dtype"] == "float32" and run_config["world_size"] == 2 and run_config["finished"] is True
    assert run_config["train"]["max_steps"] == 20 and run_config["train"]["global_batch"] == 16

    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-10", "step-20"]
    final = load_file(str(out / "checkpoints" / "step-20" / "trainable.safetensors"))
    assert max_diff(final, adapter(out)) == 0.0
    # B's last core starts at zero: every value of B's cores has moved only if it trained.
    b_cores = [v for k, v in adapter(out).items() if k.endswith("loretta_B.tt_cores")]
    assert b_cores and all(bool((v != 0).all()) for v in b_cores)


def test_one_process_matches_two_processes(straight, tmp_path):
    out = tmp_path / "run"
    # The same global batch of 16 in the same layout: two accumulated micro batches of 8 stand
    # for the two ranks' micro batches (so only the order of float additions differs).
    check(run([sys.executable, TRAIN, *SHORT_RUN, "--micro_batch_size", "8", "--grad_accum", "2",
               "--output_dir", str(out)], threads=1))
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["world_size"] == 1 and run_config["train"]["grad_accum"] == 2
    assert metrics(out)[-1]["step"] == 20
    assert max_diff(adapter(out), adapter(straight[0])) <= 1e-4


def wait_for_step(out: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if any(r["step"] >= step for r in metric_records(out)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def all_reduce_segments_of(port: int) -> str:
    """The name prefix of DeepSpeed's CPU all-reduce shared-memory segments for a run on `port`."""
    return f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_"


def assert_all_reduce_memory_is_already_unlinked(ranks: list[psutil.Process], port: int) -> None:
    """DeepSpeed's CPU all-reduce maps a shared-memory segment per rank and never unlinks it; the
    trainer unlinks the names once all ranks hold them, so nothing stays in /dev/shm afterwards
    (nor after a preempted or killed run)."""
    segment = all_reduce_segments_of(port)
    for rank in ranks:  # mapped (all-reduce works) but already unlinked
        mapped = [line for line in Path(f"/proc/{rank.pid}/maps").read_text().splitlines()
                  if f"/dev/shm/{segment}" in line]
        assert mapped and all(line.endswith("(deleted)") for line in mapped), mapped
    assert not list(Path("/dev/shm").glob(f"{segment}*"))


def test_preempted_run_resumes_to_the_same_adapter(straight, tmp_path):
    out = tmp_path / "run"
    port = free_port()
    command = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), TRAIN, *SHORT_RUN, "--output_dir", str(out)]
    launcher = subprocess.Popen(command, cwd=ROOT, env=env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        wait_for_step(out, 6, launcher)
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if any(arg.startswith("--local_rank=") for arg in p.cmdline())]
        assert len(ranks) == 2
        assert_all_reduce_memory_is_already_unlinked(ranks, port)
        # Only rank 1 gets the signal: the ranks agree on the stop through the per-step all-reduce.
        [rank_1] = [p for p in ranks if "--local_rank=1" in p.cmdline()]
        rank_1.send_signal(signal.SIGUSR1)
        output, _ = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == PREEMPTED_EXIT_CODE, output[-4000:]
    assert not list(Path("/dev/shm").glob(f"{all_reduce_segments_of(port)}*"))
    stopped = metrics(out)[-1]["step"]
    assert 6 <= stopped < 20 and f"checkpoint at step {stopped} written" in output
    assert (out / "checkpoints" / f"step-{stopped}" / "COMPLETE").is_file()
    assert not (out / "adapter").exists()

    # A save cut short and a damaged newer checkpoint must both be skipped, not resumed from.
    source = out / "checkpoints" / f"step-{stopped}"
    interrupted = out / "checkpoints" / f".tmp-step-{stopped + 1}"
    shutil.copytree(source, interrupted)
    (interrupted / "COMPLETE").unlink()
    damaged = out / "checkpoints" / f"step-{stopped + 2}"
    shutil.copytree(source, damaged)
    with open(damaged / "trainable.safetensors", "r+b") as handle:
        handle.truncate(100)

    # The optimizer state is saved whole, not per rank: one process can continue a 2-process run.
    one_process = tmp_path / "one-process"
    shutil.copytree(out, one_process)
    check(run([sys.executable, TRAIN, *SHORT_RUN, "--output_dir", str(one_process)], threads=2))
    assert max_diff(adapter(one_process), adapter(straight[0])) <= 1e-4

    output = check(run(deepspeed_command(*SHORT_RUN, "--output_dir", str(out), "--resume", "auto"), threads=1))
    assert f"ignoring torn checkpoint {interrupted}" in output and f"ignoring torn checkpoint {damaged}" in output
    assert f"resumed from {source} at step {stopped}" in output
    assert max_diff(adapter(out), adapter(straight[0])) <= 1e-6
    resumed, reference = metrics(out), metrics(straight[0])
    assert [r["step"] for r in resumed] == list(range(1, 21))  # each step logged once
    for mine, theirs in zip(resumed[stopped:], reference[stopped:]):
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-9)
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6, abs=1e-6)

    # Started again, the finished run exits at once and touches nothing.
    stamp = (out / "adapter" / "adapter.safetensors").stat().st_mtime_ns
    started = time.time()
    output = check(run([sys.executable, TRAIN, *SHORT_RUN, "--output_dir", str(out), "--resume", "auto"], threads=2))
    assert "nothing to train" in output and time.time() - started < 60
    assert (out / "adapter" / "adapter.safetensors").stat().st_mtime_ns == stamp


def make_model_dir(path: Path, tokenizer_dir: Path, intermediate: int, vocab: int) -> int:
    """A random LLaMA with the built-in model's tokenizer, hidden size and depth (so the same
    adapter fits it) but wider MLPs and a larger vocabulary; returns its parameter count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tokenizer_dir)
    config.intermediate_size, config.vocab_size = intermediate, vocab
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def checkpoint_bytes(step_dir: Path) -> dict:
    return {f.name: f.stat().st_size for f in step_dir.iterdir() if f.is_file() and f.name != "COMPLETE"}


def test_checkpoint_size_does_not_grow_with_the_frozen_model(straight, tiny_llama_dir, tmp_path):
    small_frozen = json.loads((straight[0] / "param_report.json").read_text())["frozen"]["numel"]
    big = tmp_path / "big-model"
    big_total = make_model_dir(big, tiny_llama_dir, intermediate=4 * 344, vocab=8 * 1024)
    out = tmp_path / "run"
    check(run([sys.executable, TRAIN, "--model", str(big), "--ds_config", ZERO3_OFFLOAD, "--max_steps", "10",
               "--save_every", "10", "--eval_every", "0", "--eval_batches", "1", "--export", "false",
               "--output_dir", str(out)], threads=2))
    big_frozen = json.loads((out / "param_report.json").read_text())["frozen"]["numel"]
    assert big_frozen > 4 * small_frozen and big_total > big_frozen
    small_bytes = checkpoint_bytes(straight[0] / "checkpoints" / "step-10")
    big_bytes = checkpoint_bytes(out / "checkpoints" / "step-10")
    # The same adapter on a base 5x larger: the same tensors, so the same bytes (JSON may differ
    # by a few characters); no file of the frozen weights.
    assert small_bytes.keys() == big_bytes.keys() == {"trainable.safetensors", "optimizer.safetensors",
                                                      "optimizer.json", "trainer_state.json"}
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        assert big_bytes[name] == small_bytes[name], (name, small_bytes, big_bytes)
    assert abs(big_bytes["optimizer.json"] - small_bytes["optimizer.json"]) < 64, (small_bytes, big_bytes)
    # trainer_state.json also records the run's settings (paths and flags, which differ between the
    # two runs); the rest of it must not grow with the model.
    states = [json.loads((run_dir / "checkpoints" / "step-10" / "trainer_state.json").read_text())
              for run_dir in (straight[0], out)]
    settings_sizes = [len(json.dumps(state.pop("settings", {}))) for state in states]
    assert max(settings_sizes) < 4096, settings_sizes
    assert abs(len(json.dumps(states[0])) - len(json.dumps(states[1]))) < 64, states
    total = sum(f.stat().st_size for f in (out / "checkpoints" / "step-10").rglob("*") if f.is_file())
    assert total < 150_000  # tens of kB (3 fp32 copies of 3,200 values, RNG states), vs 6 MB of frozen weights
