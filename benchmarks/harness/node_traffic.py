"""Bytes that cross the node boundary of the local two-node SLURM cluster, per training step.

``.ci/slurm_cluster.sh`` puts each node in its own network namespace with one veth into a bridge
in the machine's own namespace: every byte a node exchanges with the other node (or with the
controller) passes the host side of that node's veth, whose kernel counters
(/sys/class/net/<veth>/statistics/{rx,tx}_bytes) count it whatever program sent it. A job's
traffic is the counters' difference around it; the traffic of one training step is the
difference between a longer and a shorter job of the same settings divided by their difference
in steps, so startup, rendezvous, the first step's gathers, evaluation, checkpointing and the
export at the end, equal in both jobs, cancel out.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SLURM_CONF = "/tmp/loretta_slurm/etc/slurm.conf"
# Settings a job of this module leaves out of the submitting environment: the job's own come
# from the script's defaults and from what the caller passes.
JOB_SETTINGS = ("MODEL", "DATA", "METHOD", "OUTPUT_DIR", "DS_CONFIG", "GPUS_PER_NODE", "EXTRA_ARGS",
                "MASTER_PORT", "DRY_RUN")


def slurm_conf() -> Path:
    return Path(os.environ.get("SLURM_CONF", DEFAULT_SLURM_CONF))


def cluster_veths(conf: Path | None = None) -> dict[str, str]:
    """Node name -> the host side of its veth, from the state file the cluster script wrote
    (``cluster.env`` beside ``etc/slurm.conf``); empty for a one-node cluster on loopback."""
    state = (conf or slurm_conf()).parent.parent / "cluster.env"
    if not state.is_file():
        raise FileNotFoundError(f"{state} not found: start the cluster with .ci/slurm_cluster.sh start")
    text = state.read_text()

    def array(name: str) -> list[str]:
        m = re.search(rf"^{name}=\((.*)\)$", text, re.M)
        return m.group(1).split() if m else []

    return dict(zip(array("NODE_NAMES"), array("VETHS")))


def veth_bytes(veth: str) -> int:
    """Bytes received plus sent so far on the host side of ``veth``."""
    stats = Path("/sys/class/net") / veth / "statistics"
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


def job_env(**settings: str) -> dict[str, str]:
    """This process's environment for sbatch, without another job's variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k not in JOB_SETTINGS}
    env["SLURM_CONF"] = str(slurm_conf())
    env.update(settings)
    return env


@dataclass
class JobTraffic:
    steps: int
    bytes: int  # rx + tx on the measured veth while the job ran
    seconds: float
    output_dir: Path
    log: Path


def run_job(script: str, steps: int, output_dir: Path, log: Path, node: str = "node2",
            extra_args: str = "", timeout_s: float = 900, **settings: str) -> JobTraffic:
    """Submit slurm/``script`` for ``steps`` optimizer steps, wait for it to end and return the
    bytes that crossed ``node``'s veth meanwhile. Raises with the job's log if it failed."""
    veth = cluster_veths()[node]
    args = f"--max_steps {steps} --eval_every 0 --eval_batches 1 --save_every 0 {extra_args}".strip()
    env = job_env(OUTPUT_DIR=str(output_dir), EXTRA_ARGS=args, **settings)
    before, started = veth_bytes(veth), time.monotonic()
    res = subprocess.run(["sbatch", "--parsable", f"--output={log}", str(REPO / "slurm" / script)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed with {res.returncode}: {res.stderr}")
    job = res.stdout.strip().split(";")[0]
    # Polled every second (sbatch --wait backs off to half a minute between its checks).
    state = ""
    while time.monotonic() - started < timeout_s:
        state = job_state(job, env)
        if state in FINAL_STATES:
            break
        time.sleep(1)
    seconds, after = time.monotonic() - started, veth_bytes(veth)
    if state != "COMPLETED":
        # SIGKILL: the launcher would turn a plain scancel (SIGTERM) into a requeue.
        subprocess.run(["scancel", "--full", "--signal=KILL", job], env=env, capture_output=True, timeout=60)
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
        raise RuntimeError(f"job {job} ({script}, {steps} steps) ended {state or 'not in time'}:\n{tail}")
    return JobTraffic(steps, after - before, seconds, output_dir, log)


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def job_state(job: str, env: dict[str, str]) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                         timeout=60).stdout
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else ""


def bytes_per_step(short: JobTraffic, long: JobTraffic) -> float:
    if long.steps <= short.steps:
        raise ValueError(f"the longer job must run more steps ({long.steps} <= {short.steps})")
    return (long.bytes - short.bytes) / (long.steps - short.steps)


def trainable_bytes(output_dir: Path) -> int:
    """Bytes of the run's trainable parameters (fp32 master copy), from its adapter export."""
    from safetensors import safe_open

    path = Path(output_dir) / "adapter" / "adapter.safetensors"
    total = 0
    with safe_open(str(path), "pt") as tensors:
        for name in tensors.keys():
            t = tensors.get_tensor(name)
            total += t.numel() * 4
    return total


def ds_config_of(output_dir: Path) -> dict:
    """The DeepSpeed config as the run used it (run_config.json), to name the layout measured."""
    return json.loads((Path(output_dir) / "run_config.json").read_text()).get("ds_config") or {}
