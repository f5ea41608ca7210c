"""Checkpoint bookkeeping, metrics on resume and the stop signal, without training processes."""
import json
import os
import signal

import pytest

from loretta_ds.distributed.checkpoint import (MARKER, check_checkpoint, latest_checkpoint, list_checkpoints, rotate,
                                               write_marker)
from loretta_ds.distributed.stop import StopRequest
from loretta_ds.run.metrics import MetricsLog, plot_losses, read_metrics


def make_checkpoint(root, step: int, sealed: bool = True):
    path = root / "checkpoints" / f"step-{step}"
    (path / "rng").mkdir(parents=True)
    (path / "trainable.safetensors").write_bytes(os.urandom(256))
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    (path / "rng" / "rank-0.safetensors").write_bytes(b"rng")
    if sealed:
        write_marker(path, step)
    return path


def test_marker_detects_missing_cut_and_altered_files(tmp_path):
    path = make_checkpoint(tmp_path, 5)
    assert check_checkpoint(path) is None
    assert set(json.loads((path / MARKER).read_text())["files"]) == {
        "trainable.safetensors", "trainer_state.json", "rng/rank-0.safetensors"}
    (path / "rng" / "rank-0.safetensors").write_bytes(b"RNG")  # same size, other bytes
    assert "rng/rank-0.safetensors does not match its checksum" in check_checkpoint(path)
    (path / "rng" / "rank-0.safetensors").write_bytes(b"rng")
    with open(path / "trainable.safetensors", "r+b") as handle:
        handle.truncate(10)
    assert "has 10 bytes, expected 256" in check_checkpoint(path)
    (path / "trainable.safetensors").unlink()
    assert "trainable.safetensors is missing" in check_checkpoint(path)
    assert "no COMPLETE marker" in check_checkpoint(make_checkpoint(tmp_path, 6, sealed=False))


def test_latest_complete_checkpoint_skips_and_reports_torn_ones(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, sealed=False)  # crashed before the marker
    (tmp_path / "checkpoints" / ".tmp-step-40").mkdir()  # crashed before the rename
    messages = []
    latest = latest_checkpoint(tmp_path, log=messages.append)
    assert latest.step == 20
    assert len(messages) == 2 and all("ignoring torn checkpoint" in m for m in messages)
    complete, torn = list_checkpoints(tmp_path)
    assert [c.step for c in complete] == [10, 20] and sorted(t.step for t in torn) == [30, 40]


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 25, sealed=False)
    make_checkpoint(tmp_path, 35, sealed=False)  # newer than every complete one: left for inspection
    rotate(tmp_path, keep_last=2, log=lambda message: None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-20", "step-30", "step-35"]


def test_metrics_of_a_resumed_run_replace_the_steps_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    for step in range(1, 8):
        log.log({"kind": "train", "step": step, "loss": 1.0 / step})
    log.log({"kind": "eval", "step": 5, "loss": 0.3, "accuracy": 0.7})
    log.close()
    # Interrupted after step 7, resumed from the checkpoint of step 5.
    resumed = MetricsLog(tmp_path, enabled=True, resume_step=5)
    resumed.log({"kind": "train", "step": 6, "loss": 0.25})
    resumed.close()
    steps = [(r["kind"], r["step"]) for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == [("train", 1), ("train", 2), ("train", 3), ("train", 4), ("train", 5), ("eval", 5), ("train", 6)]
    assert plot_losses(tmp_path).stat().st_size > 1000
    # Other ranks write nothing.
    MetricsLog(tmp_path / "other", enabled=False).log({"kind": "train", "step": 1, "loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_stop_signals_set_a_flag_instead_of_killing(tmp_path):
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        stop = StopRequest()
        try:
            os.kill(os.getpid(), sig)
            assert stop.requested and stop.signal_name == signal.Signals(sig).name
        finally:
            stop.restore()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_resumed_cpu_adam_continues_bit_for_bit():
    """DeepSpeed's CPU Adam (ZeRO offload) keeps beta^t in C++; a resumed optimizer must continue
    with exactly the bias correction of one that never stopped, not pow(beta, t)'s rounding."""
    import types

    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from loretta_ds.distributed.checkpoint import _replay_cpu_adam_bias_correction

    def steps(optimizer, param, first, last):
        for step in range(first, last + 1):
            param.grad = torch.sin(torch.arange(param.numel(), dtype=torch.float32) * step)
            optimizer.step()

    start = torch.linspace(-1, 1, 257)
    straight = torch.nn.Parameter(start.clone())
    straight_opt = DeepSpeedCPUAdam([straight], lr=1e-2, weight_decay=0.01)
    steps(straight_opt, straight, 1, 5)
    saved = {key: value.clone() if torch.is_tensor(value) else value
             for key, value in straight_opt.state[straight].items()}
    saved_value = straight.detach().clone()
    steps(straight_opt, straight, 6, 25)

    def resumed(replay: bool) -> torch.Tensor:
        param = torch.nn.Parameter(saved_value.clone())
        optimizer = DeepSpeedCPUAdam([param], lr=1e-2, weight_decay=0.01)
        optimizer.state[param].update({key: value.clone() if torch.is_tensor(value) else value
                                       for key, value in saved.items()})
        if replay:
            _replay_cpu_adam_bias_correction(types.SimpleNamespace(optimizer=optimizer), saved["step"])
        steps(optimizer, param, 6, 25)
        return param.detach()

    assert torch.equal(resumed(replay=True), straight.detach())
    # Without the replay the C++ side recomputes beta^t with pow: not the same bits (why it exists).
    assert not torch.equal(resumed(replay=False), straight.detach())


def test_the_first_stop_signal_is_the_one_named():
    """Ctrl-C under the deepspeed launcher: SIGINT reaches the ranks, then the launcher's SIGTERM;
    the stop message must name SIGINT, and the SIGTERM must not count as a second Ctrl-C."""
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C insists
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
