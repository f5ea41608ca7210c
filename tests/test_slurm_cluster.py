"""The SLURM scripts on a real cluster: submit, train, preempt, requeue, resume.

Needs the local one-node cluster of .ci/slurm_cluster.sh and LORETTA_SLURM=1; .ci/slurm_tests.sh
does both. Jobs run slurm/tiny_cpu.sh (the built-in tiny model on CPU, 2 processes) through the
same slurm/_launch.sh as the LLaMA-2 scripts. The finished and preempted runs force the offload
layout (DS_CONFIG=zero3_offload.json): the scripts' default, auto, picks the replicated base for
the tiny model, and the two-node tests (test_slurm_multinode.py) preempt and lose a node under that
default; here the same paths run under ZeRO-3 with parameter offload.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reliability_support import metric_records

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SLURM_CONF = "/tmp/loretta_slurm/etc/slurm.conf"
JOB_TIMEOUT_S = int(os.environ.get("LORETTA_SLURM_JOB_TIMEOUT", "900"))
# The layout of the runs that are preempted or resubmitted here (see the module's docstring).
OFFLOAD = str(REPO / "ds_configs" / "zero3_offload.json")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def slurm_env(**overrides: str) -> dict[str, str]:
    """This process's environment for SLURM clients and jobs, without stale job variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) or k == "SLURM_CONF"}
    if "SLURM_CONF" not in env and Path(DEFAULT_SLURM_CONF).is_file():
        env["SLURM_CONF"] = DEFAULT_SLURM_CONF
    for key in ("MODEL", "DATA", "METHOD", "OUTPUT_DIR", "DS_CONFIG", "GPUS_PER_NODE",
                "EXTRA_ARGS", "MASTER_PORT", "DRY_RUN"):
        env.pop(key, None)
    env.update(overrides)
    return env


def _skip_reason() -> str | None:
    if os.environ.get("LORETTA_SLURM") != "1":
        return "set LORETTA_SLURM=1 with a cluster from .ci/slurm_cluster.sh (see .ci/slurm_tests.sh)"
    if shutil.which("sinfo") is None:
        return "sinfo not installed"
    conf = slurm_env().get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        return f"SLURM_CONF={conf} does not exist"
    try:
        res = subprocess.run(["sinfo", "-h"], env=slurm_env(), capture_output=True, text=True,
                             timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    return None if res.returncode == 0 else f"sinfo fails: {res.stderr.strip()}"


_SKIP = _skip_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP))]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=slurm_env(), capture_output=True, text=True, timeout=60, **kw)


def read_log(log: Path) -> str:
    """A job log; its ranks write to it at once, and two writes may split a multibyte character
    (a strict decode would fail the test on a byte the trainer never meant)."""
    return log.read_text(errors="replace")


def job_info(job_id: str) -> dict[str, str]:
    out = run(["scontrol", "show", "job", "-o", job_id]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(job_id: str, done, what: str, log: Path | None = None,
             timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
    """Poll `scontrol show job` until done(info) holds; fail with the job log otherwise."""
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if done(info):
            return info
        if info.get("JobState") in FINAL_STATES:
            break
        time.sleep(1)
    tail = read_log(log)[-4000:] if log and log.exists() else "(no log)"
    pytest.fail(f"job {job_id}: waiting for {what}, got JobState={info.get('JobState')} "
                f"Reason={info.get('Reason')}\n--- job log ---\n{tail}")


def sbatch(script: str, log: Path, **env: str) -> str:
    res = subprocess.run(["sbatch", "--parsable", f"--output={log}", str(REPO / "slurm" / script)],
                         cwd=REPO, env=slurm_env(**env), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def trained_steps(out_dir: Path) -> int:
    """Optimizer steps done so far, from the trainer's per-step log OUTPUT_DIR/metrics.jsonl."""
    return max([0] + [int(r["step"]) for r in metric_records(out_dir)])


def completed(info: dict[str, str]) -> bool:
    return info.get("JobState") == "COMPLETED"


@pytest.fixture(scope="module")
def trainer() -> Path:
    path = REPO / "launch" / "train.py"
    if not path.is_file():
        pytest.fail("launch/train.py is missing: the SLURM job tests run the real trainer")
    return path


@pytest.fixture(scope="module")
def uninterrupted_run(trainer, tmp_path_factory) -> Path:
    """One tiny_cpu job from start to finish; its OUTPUT_DIR."""
    base = tmp_path_factory.mktemp("slurm_uninterrupted")
    out_dir, log = base / "run", base / "job.log"
    job = sbatch("tiny_cpu.sh", log, OUTPUT_DIR=str(out_dir), DS_CONFIG=OFFLOAD)
    info = wait_job(job, completed, "completion", log)
    assert info["ExitCode"] == "0:0"
    assert "ZeRO stage 3, 2 process(es)" in read_log(log)
    return out_dir


def load_adapter(out_dir: Path) -> dict:
    from safetensors.torch import load_file

    path = out_dir / "adapter" / "adapter.safetensors"
    assert path.is_file(), f"{path} missing; adapter/ holds {sorted(p.name for p in path.parent.iterdir())}"
    return load_file(str(path))


def test_cluster_runs_two_tasks_with_rank_env():
    """srun starts the helper's task mode once per task; each maps SLURM ids to RANK/LOCAL_RANK."""
    res = subprocess.run(
        ["srun", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--export=ALL",
         "bash", str(REPO / "slurm" / "_launch.sh"), "task",
         "bash", "-c", 'echo "RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE"'],
        env=slurm_env(WORLD_SIZE="2"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["RANK=0 LOCAL_RANK=0 WORLD_SIZE=2",
                                                  "RANK=1 LOCAL_RANK=1 WORLD_SIZE=2"]


def test_bad_input_fails_the_job_with_a_message(tmp_path):
    out_dir, log = tmp_path / "run", tmp_path / "job.log"
    job = sbatch("tiny_cpu.sh", log, OUTPUT_DIR=str(out_dir), MODEL="/nonexistent/llama")
    info = wait_job(job, lambda i: i.get("JobState") in FINAL_STATES, "the job to end", log,
                    timeout=120)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0"
    text = read_log(log)
    assert "MODEL=/nonexistent/llama does not exist" in text and "nothing was started" in text
    assert not out_dir.exists()


def test_tiny_job_completes_with_adapter_and_merged_export(uninterrupted_run):
    """The job's merged export is the trained model: it loads with stock transformers and gives the
    logits of the base model with the job's adapter, which moved them away from the base's."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from loretta_ds import load_adapter as attach

    assert load_adapter(uninterrupted_run)
    base_dir = json.loads((uninterrupted_run / "run_config.json").read_text())["model"]
    ids = torch.tensor([[1, 15, 27, 300, 42, 7, 99]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(uninterrupted_run / "merged", dtype=torch.float32)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        before = base(ids).logits
        adapted = attach(base, uninterrupted_run / "adapter")(ids).logits
    assert (adapted - before).abs().max() > 1e-3  # the job trained something
    assert torch.allclose(merged, adapted, atol=1e-4), (merged - adapted).abs().max()


def test_preempted_job_requeues_resumes_and_matches(uninterrupted_run, tmp_path):
    out_dir, log = tmp_path / "run", tmp_path / "job.log"
    job = sbatch("tiny_cpu.sh", log, OUTPUT_DIR=str(out_dir), DS_CONFIG=OFFLOAD)

    # Signal only once the trainer is optimising, so the signal lands mid-run.
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while trained_steps(out_dir) < 2:
        info = job_info(job)
        assert info.get("JobState") not in FINAL_STATES, read_log(log) if log.exists() else info
        assert time.monotonic() < deadline, "the trainer printed no training step in time"
        time.sleep(0.5)
    res = run(["scancel", "--batch", "--signal=USR1", job])
    assert res.returncode == 0, res.stderr

    # The job checkpoints, requeues itself and waits (Reason=BeginTime); release it early.
    # slurmd refuses job credentials issued in the same second as the requeue revoked the old
    # ones ("Job credential revoked" fails the job for good), hence the short pause.
    wait_job(job, lambda i: int(i.get("Restarts", "0")) >= 1 and i.get("JobState") == "PENDING",
             "the requeue", log)
    steps_before_requeue = trained_steps(out_dir)
    time.sleep(2)
    run(["scontrol", "update", f"JobId={job}", "StartTime=now"])  # fails harmlessly if started
    info = wait_job(job, completed, "completion after the requeue", log)

    text = read_log(log)
    total = trained_steps(uninterrupted_run)
    assert 2 <= steps_before_requeue < total, "the signal did not land mid-run"
    assert trained_steps(out_dir) == total
    assert int(info["Restarts"]) == 1
    assert "got SIGUSR1" in text
    assert "trainer exited 75 (preempted, checkpoint written)" in text, text[-4000:]
    assert "restart 1" in text  # the second start of the same job
    assert (out_dir / "merged").is_dir()

    resumed, straight = load_adapter(out_dir), load_adapter(uninterrupted_run)
    assert resumed.keys() == straight.keys()
    for name, tensor in straight.items():
        diff = (resumed[name].double() - tensor.double()).abs().max().item()
        assert diff <= 1e-6, f"{name}: max abs diff {diff}"


def test_finished_run_is_not_trained_again(uninterrupted_run, tmp_path):
    """Submitting again onto a finished OUTPUT_DIR completes without touching the adapter."""
    adapter = uninterrupted_run / "adapter" / "adapter.safetensors"
    before = (adapter.read_bytes(), adapter.stat().st_mtime_ns)
    log = tmp_path / "job.log"
    job = sbatch("tiny_cpu.sh", log, OUTPUT_DIR=str(uninterrupted_run))
    info = wait_job(job, completed, "completion", log)
    assert info["Restarts"] == "0"
    assert (adapter.read_bytes(), adapter.stat().st_mtime_ns) == before
    assert "trainer finished (exit 0)" in read_log(log)
