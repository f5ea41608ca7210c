"""Faults that end real runs, and what is left afterwards.

Every run here is the real trainer in a subprocess; the faults are real: SIGTERM and SIGINT,
SIGKILL of one rank, SIGSTOP of one rank (a hang), SIGKILL of the whole job in the middle of a
checkpoint write, a real full file system (a 1 MiB tmpfs), and a learning rate that overflows
fp32. An interrupted run must end in bounded time with one clear message, keep its newest complete
checkpoint, and resume to the same final adapter as a run that was never interrupted.

The single-process tests (ZeRO-3) compare with one uninterrupted single-process run, the
two-process tests (deepspeed launcher, ZeRO-3 with CPU offload, gloo) with one uninterrupted
two-process run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from loretta_ds import PREEMPTED_EXIT_CODE
from loretta_ds.distributed.checkpoint import check_checkpoint, list_checkpoints
from reliability_support import (FAST, SAVE_DELAY_ENV, Run, adapter, checkpoint_steps, deepspeed_command,
                                 error_lines, max_difference, run_to_end, single_command, train_records,
                                 wait_for_step, wait_until)

pytestmark = pytest.mark.slow  # each test trains (or kills) a real trainer process

STEPS = FAST["max_steps"]
SAVE_EVERY = FAST["save_every"]


@pytest.fixture(scope="module")
def tiny_llama():
    from loretta_ds.tiny_llama import ensure_tiny_llama

    return ensure_tiny_llama()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama) -> Path:
    """One uninterrupted single-process run: what every interrupted single-process run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    status, output = run_to_end(single_command(out), out.parent / "train.log")
    assert status == 0, output[-4000:]
    assert checkpoint_steps(out) == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    return out


def file_digests(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_clear_error(output: str, *fragments: str) -> str:
    errors = error_lines(output)
    assert len(errors) == 1, f"expected one error message, got {errors}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- 5. SIGTERM / SIGINT: checkpoint at the step boundary, exit 75, resumable -----------------


def stop_with(sig: signal.Signals, out: Path, log: Path, after_step: int) -> tuple[int, str]:
    run = Run(single_command(out), log)
    try:
        wait_for_step(run, out, after_step)
        run.process.send_signal(sig)
        status = run.wait(120)
        return status, run.output()
    finally:
        run.close()


def test_sigterm_and_sigint_checkpoint_at_the_step_boundary_and_resume(reference, tmp_path):
    out = tmp_path / "run"
    status, output = stop_with(signal.SIGTERM, out, tmp_path / "sigterm.log", after_step=3)
    assert status == PREEMPTED_EXIT_CODE, output[-4000:]
    first_stop = train_records(out)[-1]["step"]
    assert 3 <= first_stop < STEPS
    # The checkpoint is of the last finished step, written whole, off the save_every schedule.
    assert checkpoint_steps(out)[-1] == first_stop
    assert json.loads((out / "checkpoints" / f"step-{first_stop}" / "trainer_state.json").read_text())["step"] \
        == first_stop
    assert f"stop requested (SIGTERM): checkpoint at step {first_stop} written" in output
    assert "Traceback" not in output and not error_lines(output)
    assert not (out / "adapter").exists()
    assert list_checkpoints(out)[1] == []  # nothing torn

    status, output = stop_with(signal.SIGINT, out, tmp_path / "sigint.log", after_step=first_stop + 3)
    assert status == PREEMPTED_EXIT_CODE, output[-4000:]
    assert f"resumed from {out / 'checkpoints' / f'step-{first_stop}'} at step {first_stop}" in output
    second_stop = train_records(out)[-1]["step"]
    assert first_stop + 3 <= second_stop < STEPS and checkpoint_steps(out)[-1] == second_stop
    assert f"stop requested (SIGINT): checkpoint at step {second_stop} written" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output

    status, output = run_to_end(single_command(out), tmp_path / "finish.log")
    assert status == 0, output[-4000:]
    assert [r["step"] for r in train_records(out)] == list(range(1, STEPS + 1))  # each step logged once
    assert max_difference(adapter(out), adapter(reference)) <= 1e-6


@pytest.mark.multiprocess
def test_ctrl_c_under_the_deepspeed_launcher_is_named_sigint(tiny_llama, tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole job (launcher and ranks); the launcher then
    sends the ranks SIGTERM. The ranks stop at the step boundary with one message naming SIGINT."""
    out = tmp_path / "run"
    run = Run(deepspeed_command(out), tmp_path / "ctrl-c.log")
    try:
        wait_for_step(run, out, 2, timeout=300)
        os.killpg(run.pid, signal.SIGINT)
        run.wait(180)
        output = run.output()
    finally:
        run.close()
    stopped_at = train_records(out)[-1]["step"]
    assert output.count(f"stop requested (SIGINT): checkpoint at step {stopped_at} written") == 1, output[-4000:]
    assert "(SIGTERM)" not in output
    # No rank prints a traceback. DeepSpeed's own runner (the parent process, waiting in
    # subprocess.wait) raises KeyboardInterrupt and prints one; that is the only one, and not ours.
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output
    tracebacks = output.split("Traceback (most recent call last):")[1:]
    assert all("deepspeed/launcher/runner.py" in t and "KeyboardInterrupt" in t for t in tracebacks), output[-4000:]
    assert len(tracebacks) <= 1
    assert checkpoint_steps(out)[-1] == stopped_at


def test_a_finished_run_is_extended_with_more_steps(tiny_llama, tmp_path):
    """`--resume auto --max_steps N` on a finished run trains it further (the commonest resume);
    a change that cannot be continued is refused, naming the way that works."""
    out = tmp_path / "run"
    status, output = run_to_end(single_command(out, max_steps=6), tmp_path / "first.log")
    assert status == 0, output[-4000:]
    status, output = run_to_end(single_command(out, max_steps=10), tmp_path / "extended.log")
    assert status == 0, output[-4000:]
    assert "continuing" in output and "a 6-step run, to 10 steps: the lr schedule is recomputed" in output
    assert f"resumed from {out / 'checkpoints' / 'step-6'} at step 6" in output
    assert [r["step"] for r in train_records(out)] == list(range(1, 11))  # each step once
    record = json.loads((out / "run_config.json").read_text())
    assert record["finished"] is True and record["final_step"] == 10 and record["train"]["max_steps"] == 10
    # From the first step after resuming, the lr is that of a run planned with 10 steps from the start.
    planned = tmp_path / "ten"
    status, output = run_to_end(single_command(planned, max_steps=10), tmp_path / "ten.log")
    assert status == 0, output[-4000:]
    assert [r["lr"] for r in train_records(out)][6:] == [r["lr"] for r in train_records(planned)][6:]

    status, output = run_to_end(single_command(out, max_steps=10, lr="0.5"), tmp_path / "other.log")
    assert status == 2
    assert_one_clear_error(output, "holds another run with a different config", "lr:",
                           "Only its length", "--resume PATH")


# --- 2. kill -9 of the whole job while a checkpoint is being written -------------------------


def test_kill9_while_a_checkpoint_is_written_resumes_from_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torn = checkpoints / f".tmp-step-{2 * SAVE_EVERY}"
    # The test hook holds every save for a few seconds after its data files and before its
    # COMPLETE marker: the second save is killed in that window.
    run = Run(single_command(out), tmp_path / "killed.log", **{SAVE_DELAY_ENV: "4"})
    try:
        wait_until(lambda: (torn / "trainable.safetensors").is_file(), run, what=f"the save into {torn}")
        run.kill_all()
    finally:
        run.close()
    assert run.process.returncode == -signal.SIGKILL
    assert torn.is_dir() and not (torn / "COMPLETE").exists()
    assert checkpoint_steps(out) == [SAVE_EVERY]
    previous = checkpoints / f"step-{SAVE_EVERY}"
    # A newer checkpoint damaged on disk (here: one flipped byte) is not resumed from either.
    damaged = checkpoints / f"step-{2 * SAVE_EVERY + 2}"
    shutil.copytree(previous, damaged)
    with open(damaged / "trainable.safetensors", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    assert "checksum" in check_checkpoint(damaged)

    status, output = run_to_end(single_command(out), tmp_path / "resumed.log")
    assert status == 0, output[-4000:]
    assert f"ignoring torn checkpoint {torn}: interrupted save" in output, output[-4000:]
    assert f"ignoring torn checkpoint {damaged}: trainable.safetensors does not match its checksum" in output
    assert f"resumed from {previous} at step {SAVE_EVERY}" in output
    assert max_difference(adapter(out), adapter(reference)) <= 1e-6
    # Once newer complete checkpoints exist, the torn leftovers are cleaned up.
    assert not torn.exists() and not damaged.exists()


# --- 3. a full disk while saving -------------------------------------------------------------


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler = disk / "filler"
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def test_full_disk_while_saving_keeps_the_previous_checkpoint(reference, tmp_path, small_disk):
    out = small_disk / "run"
    previous = out / "checkpoints" / f"step-{SAVE_EVERY}"
    shutil.copytree(reference / "checkpoints" / f"step-{SAVE_EVERY}", previous)
    before = file_digests(previous)
    checkpoint_bytes = sum(len(b) for b in before.values())
    # Room for the run's small files, not for another checkpoint: the next save runs out of space.
    fill(small_disk, leave=checkpoint_bytes // 2)

    status, output = run_to_end(single_command(out), tmp_path / "full.log")  # the log is not on the small disk
    assert status not in (0, PREEMPTED_EXIT_CODE), output[-4000:]
    message = assert_one_clear_error(output, "No space left on device", f"step-{2 * SAVE_EVERY}",
                                     str(previous))
    assert "--resume auto" in message  # the fix: free space, then relaunch
    assert f"resumed from {previous} at step {SAVE_EVERY}" in output
    # The previous checkpoint is intact, byte for byte, and still the newest complete one; the
    # partial save was removed, which gives the space back.
    assert file_digests(previous) == before and check_checkpoint(previous) is None
    assert checkpoint_steps(out) == [SAVE_EVERY]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [previous.name]
    assert not (out / "adapter").exists()


# --- 4. non-finite loss or gradients ---------------------------------------------------------


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tiny_llama, tmp_path):
    out = tmp_path / "run"
    # A learning rate of 1e30 overflows fp32: after the first real update the loss is NaN for good.
    status, output = run_to_end(single_command(out, lr="1e30", warmup_steps=0, save_every=1, max_bad_steps=3),
                                tmp_path / "nan.log")
    assert status == 1, output[-4000:]
    assert_one_clear_error(output, "3 consecutive steps had a non-finite loss or gradients",
                           str(out / "checkpoints"), "--lr")
    train = train_records(out)
    skipped = [r["step"] for r in train if r["skipped"]]
    first_bad = skipped[0]
    assert skipped == [first_bad, first_bad + 1, first_bad + 2] and train[-1]["step"] == first_bad + 2
    assert all(r["loss"] == r["loss"] for r in train if not r["skipped"])  # good steps: finite losses
    for count, step in enumerate(skipped, start=1):  # each skipped step reported and counted
        assert f"step {step}: non-finite loss or gradients, update skipped ({count} in a row, {count} in total)" \
            in output
    # The newest checkpoint is the last good step's and holds finite values; the bad steps wrote none.
    assert checkpoint_steps(out)[-1] == first_bad - 1
    last_good = out / "checkpoints" / f"step-{first_bad - 1}"
    state = json.loads((last_good / "trainer_state.json").read_text())
    assert (state["bad_streak"], state["bad_total"]) == (0, 0)
    assert all(torch.isfinite(t).all() for t in load_file(str(last_good / "trainable.safetensors")).values())
    assert not (out / "adapter").exists()
    assert json.loads((out / "run_config.json").read_text())["finished"] is False


def test_a_late_blow_up_fails_the_run_without_saving_or_exporting_it(tiny_llama, tmp_path):
    """An update that writes enormous (or non-finite) parameters right before the end: the run must
    not finish with exit 0 and a garbage model. It stops with exit 1, exports nothing, and names the
    checkpoint to trust: none when the first update blew up, else the newest one from before."""
    out = tmp_path / "run"
    status, output = run_to_end(single_command(out, lr="1e30", warmup_steps=0, max_steps=5, save_every=1,
                                               max_bad_steps=10, export="true"), tmp_path / "blowup.log")
    assert status == 1, output[-4000:]
    # The very first update blew up: every checkpoint written after it is suspect, none is named.
    assert_one_clear_error(output, "the training diverged", "no adapter, no merged export", "--lr",
                           f"no checkpoint in {out / 'checkpoints'} is from before the divergence")
    assert checkpoint_steps(out), "the checkpoints written before the blow-up were removed"
    assert not (out / "adapter").exists() and not (out / "merged").exists()
    assert json.loads((out / "run_config.json").read_text())["finished"] is False

    # Two sound steps, then, in a new directory that writes no checkpoint of its own, the same
    # blow-up a few steps after resuming: the message names the sound checkpoint it started from.
    good, late = tmp_path / "good", tmp_path / "late"
    status, output = run_to_end(single_command(good, max_steps=2, save_every=1), tmp_path / "good.log")
    assert status == 0, output[-4000:]
    status, output = run_to_end(single_command(late, resume=str(good / "checkpoints" / "step-2"),
                                               allow_config_change="true", lr="1e30", warmup_steps=0, max_steps=6,
                                               save_every=100, max_bad_steps=10, export="true"),
                                tmp_path / "late.log")
    assert status == 1, output[-4000:]
    # The first update after resuming already uses this run's lr, not the checkpoint run's.
    assert [r["lr"] > 1e20 for r in train_records(late)][:1] == [True], train_records(late)[:1]
    message = assert_one_clear_error(output, "the training diverged", "no adapter, no merged export")
    assert f"the last good checkpoint is {good / 'checkpoints' / 'step-2'} (step 2)" in message, message
    values = load_file(str(good / "checkpoints" / "step-2" / "trainable.safetensors")).values()
    assert all(torch.isfinite(t).all() and t.abs().max() < 1e3 for t in values)
    assert 2 in checkpoint_steps(good) and not (late / "adapter").exists()


# --- 1. one rank of a two-process ZeRO-3 run killed, or hung --------------------------------


@pytest.fixture(scope="module")
def reference_two_ranks(tmp_path_factory, tiny_llama) -> Path:
    out = tmp_path_factory.mktemp("reference-2") / "run"
    status, output = run_to_end(deepspeed_command(out), out.parent / "train.log")
    assert status == 0, output[-4000:]
    return out


def exit_time(process: psutil.Process, since: float, timeout: float) -> float:
    try:
        process.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        raise AssertionError(f"the surviving rank still runs {timeout} s after the fault") from None
    return time.monotonic() - since


@pytest.mark.multiprocess
def test_kill9_of_one_rank_ends_the_run_and_the_relaunch_resumes(reference_two_ranks, tmp_path):
    out = tmp_path / "run"
    dist_timeout = 60
    run = Run(deepspeed_command(out, dist_timeout=dist_timeout), tmp_path / "killed.log")
    try:
        wait_until(lambda: SAVE_EVERY in checkpoint_steps(out) and train_records(out)[-1]["step"] >= SAVE_EVERY + 2,
                   run, what="a checkpoint and two more steps")
        ranks = run.ranks()
        assert sorted(ranks) == [0, 1]
        killed_at = time.monotonic()
        ranks[1].kill()
        survivor_exit = exit_time(ranks[0], killed_at, dist_timeout + 60)
        status = run.wait(120)
    finally:
        run.close()
    output = run.output()
    print(f"rank 0 exited {survivor_exit:.1f} s after rank 1 was killed")
    assert status != 0
    assert survivor_exit < dist_timeout + 30
    assert_one_clear_error(output, "lost contact with rank 1 of 2", "--resume auto")
    newest = checkpoint_steps(out)[-1]
    assert newest >= SAVE_EVERY and not (out / "adapter").exists()

    status, output = run_to_end(deepspeed_command(out, dist_timeout=dist_timeout), tmp_path / "relaunch.log")
    assert status == 0, output[-4000:]
    assert f"resumed from {out / 'checkpoints' / f'step-{newest}'} at step {newest}" in output
    assert [r["step"] for r in train_records(out)] == list(range(1, STEPS + 1))
    assert max_difference(adapter(out), adapter(reference_two_ranks)) <= 1e-6


@pytest.mark.multiprocess
def test_a_hung_rank_0_ends_the_run_after_dist_timeout(tiny_llama, tmp_path):
    """Rank 0 hangs (SIGSTOP): it also hosts the rendezvous store, so the survivor must find out
    without it, and must say so itself (rank 0 normally prints the run's messages)."""
    out = tmp_path / "run"
    dist_timeout = 10
    run = Run(deepspeed_command(out, dist_timeout=dist_timeout), tmp_path / "hung.log")
    hung = None
    try:
        wait_for_step(run, out, 3)
        ranks = run.ranks()
        hung = ranks[0]
        stopped_at = time.monotonic()
        hung.suspend()  # SIGSTOP: alive, its sockets open, answering nothing
        survivor_exit = exit_time(ranks[1], stopped_at, 4 * dist_timeout + 60)
    finally:
        if hung is not None:
            hung.kill()
        run.wait(120)
        run.close()
    output = run.output()
    print(f"rank 1 exited {survivor_exit:.1f} s after rank 0 hung (--dist_timeout {dist_timeout})")
    # Not before the collective timeout (a slow rank is not a lost one), and bounded after it.
    assert dist_timeout <= survivor_exit < 3 * dist_timeout + 30
    assert_one_clear_error(output, "lost contact with rank 0 of 2", "--dist_timeout", "--resume auto")
