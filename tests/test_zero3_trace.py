"""ZeRO-3 keeps the weights it is configured to keep after the step-0 evaluation.

A fresh run evaluates before its first training step (the "eval accuracy X (step 0) -> Y" line); a
resumed run does not. DeepSpeed 0.19 records its module trace from the first forwards it sees and
caches its release decisions per position in that trace without ever dropping them, so a fresh
run's forward-only evaluation left every later training forward releasing the weights its
backward gathers again (loretta_ds.distributed.zero3_params.untraced_forwards). The test trains
from scratch, evaluation at step 0 included, and checks that from the third step on (DeepSpeed
records the trace in one step and uses it from the next) every partitioned weight is still
gathered when the forward reaches the output head (all but the input embedding, which the backward
does not use): the shipped config's stage3_max_live_parameters and stage3_max_reuse_distance (1e9)
hold the whole tiny model, as they do in a resumed run. Without the fix 180,224 of the 526,336 were.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_support import REPO, clean_env, train_in_this_process

STEPS = 4


def _train_and_sample(out: Path) -> dict:
    """The trainer's stages in this process (world size 1: ZeRO-3 still partitions every frozen
    weight and decides after each module whether to release it); at each training forward, the
    partitioned elements gathered when the output head runs."""
    import torch

    argv = ["--ds_config", "zero3_offload", "--max_steps", str(STEPS), "--save_every", "0", "--eval_every", "0",
            "--eval_batches", "1", "--export", "false", "--seed", "0", "--output_dir", str(out)]
    sampled: dict[int, int] = {}
    partitioned_total = {"numel": 0}

    class GatheredAtTheHead:
        def on_engine_ready(self, trainer) -> None:
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            partitioned = [p for p in trainer.model.parameters() if hasattr(p, "ds_status") and not p.ds_persist]
            # The input embedding's weight is used once, in the forward (no gradient flows into
            # token ids), so nothing reuses it and ZeRO-3 rightly releases it after its use.
            embedding = {id(p) for p in trainer.model.get_input_embeddings().parameters()}
            partitioned_total["numel"] = sum(p.ds_numel for p in partitioned if id(p) not in embedding)

            def sample(module, args):
                if module.training and torch.is_grad_enabled():
                    sampled[trainer.step + 1] = sum(p.ds_numel for p in partitioned
                                                    if p.ds_status != ZeroParamStatus.NOT_AVAILABLE)
            trainer.model.get_output_embeddings().register_forward_pre_hook(sample)

    train_in_this_process(argv, [GatheredAtTheHead()])
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line).get("kind") == "eval"]
    return {"reused_by_backward": partitioned_total["numel"], "gathered_at_head": sampled,
            "evaluated_at": [record["step"] for record in evaluations]}


@pytest.mark.slow
def test_a_fresh_run_keeps_its_weights_gathered_through_the_forward(tmp_path):
    result = subprocess.run([sys.executable, __file__, str(tmp_path / "run")], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    assert data["evaluated_at"][0] == 0  # the step-0 evaluation ran before training
    assert data["reused_by_backward"] > 0
    gathered = {int(step): numel for step, numel in data["gathered_at_head"].items()}
    assert sorted(gathered) == list(range(1, STEPS + 1))
    for step in range(3, STEPS + 1):
        assert gathered[step] == data["reused_by_backward"], (
            f"step {step}: {gathered[step]:,} of the {data['reused_by_backward']:,} partitioned elements the backward "
            f"reuses were gathered when the forward reached the head; ZeRO-3 released some ({gathered})")


if __name__ == "__main__":
    from loretta_ds.distributed import process_group as dist

    dist.init_distributed(timeout_s=300)
    outcome = _train_and_sample(Path(sys.argv[1]))
    dist.shutdown()
    print("RESULT " + json.dumps(outcome), flush=True)
