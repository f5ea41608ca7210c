"""Shared by the reliability tests: start the real trainer as a subprocess (one process, or two
under the deepspeed launcher), watch the files it writes, read its results.

Nothing here imitates the trainer: the tests send real signals to real processes and read the
real output directory.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "launch" / "train.py")
ZERO3 = str(REPO / "ds_configs" / "zero3.json")
ZERO3_OFFLOAD = str(REPO / "ds_configs" / "zero3_offload.json")
SAVE_DELAY_ENV = "LORETTA_DS_TEST_SAVE_DELAY"  # read by tests/hooks/sitecustomize.py
HOOKS = str(Path(__file__).resolve().parent / "hooks")

# Small and fast: the built-in model on the bundled task, short sequences, no eval, no export.
# Enough steps that a signal sent after a few of them always lands before the end.
FAST = {"max_steps": 24, "save_every": 4, "keep_last": 100, "eval_every": 0, "eval_batches": 1, "seq_len": 48,
        "micro_batch_size": 2, "export": "false", "seed": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict:
    """This environment without launcher variables (the test may itself run under one), one thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", SAVE_DELAY_ENV)}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    if extra.get(SAVE_DELAY_ENV):  # the hook that slows saves down loads at start-up from HOOKS
        env["PYTHONPATH"] = os.pathsep.join(p for p in (HOOKS, env.get("PYTHONPATH")) if p)
    return env


def flags(output_dir: Path, **overrides) -> list[str]:
    values = {**FAST, **overrides, "output_dir": str(output_dir)}
    args = []
    for key, value in values.items():
        if value is not None:
            args += [f"--{key}", str(value)]
    return args


def single_command(output_dir: Path, **overrides) -> list[str]:
    """One process, ZeRO-3 without offload (4 s less start-up than with it; the faults tested with
    one process do not depend on where the optimizer state lives)."""
    return [sys.executable, TRAIN, *flags(output_dir, **{"ds_config": ZERO3, **overrides})]


def deepspeed_command(output_dir: Path, **overrides) -> list[str]:
    """Two ranks under the deepspeed launcher (`--num_gpus 2` starts two CPU ranks with gloo),
    ZeRO-3 with parameters and optimizer offloaded to the CPU: the configuration of the big runs."""
    launcher = shutil.which("deepspeed")
    head = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", "2", "--master_port", str(free_port()), TRAIN,
            *flags(output_dir, **{"ds_config": ZERO3_OFFLOAD, **overrides})]


class Run:
    """A trainer subprocess in its own session; output goes to a log file."""

    def __init__(self, command: list[str], log: Path, **env: str):
        self.command = command
        self.log_path = log
        self._log = log.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, cwd=REPO, env=clean_env(**env), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"{self.command[:4]} ... did not end within {timeout} s:\n{self.tail()}")
        finally:
            if not self._log.closed:
                self._log.flush()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 5000) -> str:
        return self.output()[-chars:]

    def ranks(self) -> dict[int, psutil.Process]:
        """The trainer processes started by the deepspeed launcher, by local rank."""
        found = {}
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                for arg in child.cmdline():
                    if arg.startswith("--local_rank="):
                        found[int(arg.split("=", 1)[1])] = child
            except psutil.NoSuchProcess:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL the whole session (launcher and ranks): what a node failure looks like."""
        try:
            os.killpg(self.pid, 9)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        if self.alive():
            self.kill_all()
        self._log.close()


def run_to_end(command: list[str], log: Path, timeout: float = 300, **env: str) -> tuple[int, str]:
    run = Run(command, log, **env)
    try:
        status = run.wait(timeout)
        return status, run.output()
    finally:
        run.close()


def metric_records(output_dir: Path, kind: str = "train") -> list[dict]:
    """OUTPUT_DIR/metrics.jsonl records of one kind (train, eval, generation), read as the trainer
    reads them back (a line being written is ignored): every test reads metrics through here."""
    from loretta_ds.run.metrics import read_metrics

    return [r for r in read_metrics(Path(output_dir) / "metrics.jsonl") if r.get("kind") == kind]


def train_records(output_dir: Path) -> list[dict]:
    return metric_records(output_dir, "train")


def wait_until(condition, run: Run, timeout: float = 240, what: str = "the condition") -> None:
    """Poll ``condition()`` while ``run`` is alive; fail when it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if not run.alive():
            raise AssertionError(f"the run ended (exit {run.process.returncode}) before {what}:\n{run.tail()}")
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s:\n{run.tail()}")


def wait_for_step(run: Run, output_dir: Path, step: int, timeout: float = 240) -> None:
    wait_until(lambda: any(r["step"] >= step for r in train_records(output_dir)), run, timeout,
               f"training step {step}")


def checkpoint_steps(output_dir: Path) -> list[int]:
    """Steps of the complete, intact checkpoints (the trainer's own definition)."""
    from loretta_ds.distributed.checkpoint import list_checkpoints

    complete, _ = list_checkpoints(output_dir)
    return [c.step for c in complete]


def adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(output_dir) / "adapter" / "adapter.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def error_lines(output: str) -> list[str]:
    """The `error: ...` messages in a run's output (progress bars rewrite lines with \\r)."""
    return [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip().startswith("error:")]


def train_in_this_process(argv: list[str], callbacks: list):
    """The trainer's stages (plan, model, engine, data, loop) for one `loretta-ds train ARGV` run in
    this process, world size 1, with ``callbacks``; returns the Trainer once its loop ended with 0.
    The caller has initialised torch.distributed (loretta_ds.distributed.engine.init_distributed)."""
    from loretta_ds.cli import build_parser
    from loretta_ds.distributed.stop import StopRequest
    from loretta_ds.run_config import config_from_args
    from loretta_ds.train_plan import build_plan
    from loretta_ds.trainer import Trainer

    cfg = config_from_args(build_parser("train").parse_args(["train", *argv]))
    trainer = Trainer(cfg, callbacks=callbacks)
    trainer.plan = build_plan(cfg, world_size=1)
    trainer._stop = StopRequest(signals=())  # the loop reads it; no signal handlers in this helper
    Path(cfg.output_dir).mkdir(parents=True)
    trainer.setup_model()
    trainer.setup_engine()
    trainer.setup_data()
    assert trainer.train() == 0
    return trainer
