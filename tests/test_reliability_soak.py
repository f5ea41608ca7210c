"""Soak: 500 steps of the built-in model, with an eval and a checkpoint every 50 steps.

Over that long a run, host memory must level off after warm-up (a leak per step, per eval or per
checkpoint would show as growth), and checkpoint rotation must keep exactly the newest --keep_last
checkpoints. One process, ZeRO-3 with CPU offload (pinned host buffers are where a leak would
show); about a minute on two cores.
"""
from __future__ import annotations


import pytest

from reliability_support import (ZERO3_OFFLOAD, metric_records, adapter, checkpoint_steps, run_to_end, single_command,
                                 train_records)

pytestmark = pytest.mark.slow  # 500 training steps: about 1.5 minutes on 2 cores

STEPS, EVERY, KEEP = 500, 50, 3
WARMUP_STEPS = 100  # two evals and two checkpoints: every kind of work has run, caches are filled


def test_soak_memory_is_flat_and_checkpoints_rotate(tmp_path):
    out = tmp_path / "run"
    command = single_command(out, max_steps=STEPS, save_every=EVERY, eval_every=EVERY, eval_batches=2,
                             keep_last=KEEP, seq_len=32, ds_config=ZERO3_OFFLOAD)
    status, output = run_to_end(command, tmp_path / "soak.log", timeout=900)
    assert status == 0, output[-4000:]

    train = train_records(out)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert not any(r["skipped"] for r in train)
    rss = {r["step"]: r["rss_mb"] for r in train}
    settled = rss[WARMUP_STEPS]
    peak = max(value for step, value in rss.items() if step > WARMUP_STEPS)
    print(f"RSS after warm-up (step {WARMUP_STEPS}) {settled:.0f} MiB, highest later {peak:.0f} MiB "
          f"({100 * (peak / settled - 1):+.1f}%), at the end {rss[STEPS]:.0f} MiB")
    assert peak <= 1.10 * settled

    assert [r["step"] for r in metric_records(out, "eval")] == list(range(0, STEPS + 1, EVERY))
    # Rotation: only the newest KEEP checkpoints are left, complete, and nothing else.
    newest = list(range(STEPS - (KEEP - 1) * EVERY, STEPS + 1, EVERY))
    assert checkpoint_steps(out) == newest
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(f"step-{s}" for s in newest)
    assert adapter(out)
