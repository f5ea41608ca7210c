"""One run at a time per output directory: real trainer processes, a real flock, a real SIGKILL.

A second launch into a directory in use ends at once (exit 2) naming the first run's host and
pid, and the first run goes on undisturbed; a holder killed with SIGKILL leaves no lock behind
(the kernel drops it), so the next run starts.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loretta_ds import PREEMPTED_EXIT_CODE
from loretta_ds.run.directory import LOCK as LOCK_FILE
from loretta_ds.run.lock import OutputDirBusy, RunLock
from reliability_support import (FAST, SAVE_DELAY_ENV, Run, checkpoint_steps, deepspeed_command, error_lines,
                                 run_to_end, single_command, train_records, wait_for_step)

HOLD = ("import sys, time; from loretta_ds.run.lock import RunLock; lock = RunLock.acquire(sys.argv[1], create=True); "
        "lock.record_holder(); print('locked', flush=True); time.sleep(120)")


def hold_lock(directory: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(OutputDirBusy, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            RunLock.acquire(tmp_path / "run", create=True)
        with pytest.raises(OutputDirBusy):
            RunLock.acquire(tmp_path / "run", create=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock.acquire(tmp_path / "run", create=False)  # the file stayed; the lock did not
    assert lock is not None and lock.locked
    lock.release()
    assert RunLock.acquire(tmp_path / "elsewhere", create=False) is None
    assert not (tmp_path / "elsewhere").exists()  # create=False writes nothing


# Long enough to outlive the second launches; the first run is then stopped with SIGTERM
# (checkpoint, exit 75), which is what a preemption does.
LONG = {"max_steps": 100000, "save_every": 500}


@pytest.mark.multiprocess
def test_a_second_run_in_the_same_directory_ends_at_once_naming_the_first(tmp_path):
    from loretta_ds.tiny_llama import ensure_tiny_llama

    ensure_tiny_llama()
    out = tmp_path / "run"
    first = Run(single_command(out, **LONG), tmp_path / "first.log")
    try:
        wait_for_step(first, out, 1)
        for name, command in (("one process", single_command(out, **LONG)),
                              # the same global batch (2) in two ranks: the same run, so only the lock refuses it
                              ("two ranks", deepspeed_command(out, **LONG, micro_batch_size=1))):
            started = time.monotonic()
            status, output = run_to_end(command, tmp_path / f"second-{name}.log", timeout=180)
            seconds = time.monotonic() - started
            assert first.alive(), f"the first run ended while the second ({name}) started:\n{first.tail()}"
            assert status == 2, output[-4000:]
            errors = error_lines(output)
            assert len(errors) == 1 and "Traceback" not in output, output[-4000:]
            assert f"pid {first.pid} on host {socket.gethostname()}" in errors[0], errors[0]
            assert "another --output_dir" in errors[0]
            assert seconds < 120, f"{name}: the refusal took {seconds:.0f} s"
        first.process.send_signal(signal.SIGTERM)
        assert first.wait(120) == PREEMPTED_EXIT_CODE, first.tail()
    finally:
        first.close()
    # The first run was not disturbed: each step logged once, in order, its last checkpoint intact.
    steps = [r["step"] for r in train_records(out)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 1
    assert checkpoint_steps(out)[-1] == steps[-1]


@pytest.mark.multiprocess
def test_a_sigkilled_run_leaves_no_lock_behind(tmp_path):
    from loretta_ds.tiny_llama import ensure_tiny_llama

    ensure_tiny_llama()
    out = tmp_path / "run"
    # Each save is held for a second (the test hook), so the kill lands in the middle of the run.
    killed = Run(single_command(out), tmp_path / "killed.log", **{SAVE_DELAY_ENV: "1"})
    try:
        wait_for_step(killed, out, 5)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == killed.pid
        killed.kill_all()
    finally:
        killed.close()
    assert killed.process.returncode == -signal.SIGKILL
    assert train_records(out)[-1]["step"] < FAST["max_steps"]
    status, output = run_to_end(single_command(out), tmp_path / "next.log")
    assert status == 0, output[-4000:]
    assert "resumed from" in output and "in use by another run" not in output
    assert [r["step"] for r in train_records(out)] == list(range(1, FAST["max_steps"] + 1))
    assert json.loads((out / LOCK_FILE).read_text())["pid"] != killed.pid
