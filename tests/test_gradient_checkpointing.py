"""Gradient checkpointing under ZeRO-3 with CPU offload: it runs, recomputes, trains exactly as a
run without it, and resumes exactly.

Known failure elsewhere (transformers#47254): ZeRO-3 releases a frozen parameter after the
forward, and the recompute in backward then sees it empty ("saved [1024] vs recomputed [0]").
The trainer's DeepSpeed (0.19.8 and later: deepspeedai/DeepSpeed#8148) gathers frozen parameters
again for the recompute; with DeepSpeed 0.19.2 every configuration below fails that way, the
trainer's own settings included (its frozen projection weights are partitioned as they must be).

Cost: the loss equality for every configuration (rep / adp x norms trained / frozen) runs in one
single process (world size 1, ZeRO-3 still partitions and releases every frozen weight), eight
short runs of the trainer's stages one after another. Four 2-process launches cover the rest:
LoRETTA_adp with frozen norms (the case of the failure above) without and with checkpointing,
and a checkpointed run preempted with SIGUSR1 and resumed. They train on packed chat rows (the
bundled chat task, --packing), so the same launches show that a packed run resumes bit for bit.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loretta_ds import PREEMPTED_EXIT_CODE
from reliability_support import (REPO, SAVE_DELAY_ENV, Run, adapter, clean_env, deepspeed_command,
                                 max_difference, metric_records, run_to_end, train_in_this_process,
                                 wait_for_step)

CONFIGS = [("rep", "true"), ("rep", "false"), ("adp", "true"), ("adp", "false")]
STEPS = 6
# fp32 throughout: the recompute repeats the same operations on the same inputs.
TOLERANCE = 1e-5
TWO_PROCESS = dict(method="adp", train_norms="false", max_steps=STEPS, save_every=2, eval_every=0,
                   eval_batches=1, dataset="bundled:chat", packing="true", seq_len=64, micro_batch_size=2,
                   export="false", seed=0)


# ---------------------------------------------------------------- one process, every configuration

def _train_in_this_process(out: Path, method: str, norms: str, checkpointing: bool, steps: int) -> dict:
    """The trainer's stages (plan, model, engine, data, loop) for one run, in this process; counts
    the training-mode calls of each decoder layer's MLP: transformers checkpoints a layer's
    ``forward``, so the modules inside it are called twice per micro batch when the layer is
    recomputed (a pre-hook: the recompute stops early, inside the MLP, once it has every tensor
    backward needs, so the MLP's forward hook would not run again)."""
    argv = ["--ds_config", "zero3_offload", "--method", method, "--train_norms", norms,
            "--max_steps", str(steps), "--save_every", "0", "--eval_every", "0", "--eval_batches", "1",
            "--export", "false", "--seed", "0", "--seq_len", "48", "--micro_batch_size", "4",
            "--output_dir", str(out)]
    if checkpointing:
        argv.append("--gradient_checkpointing")
    calls = {"forwards": 0}

    class CountLayerForwards:
        def on_engine_ready(self, trainer) -> None:
            import torch

            def count(module, args):
                # Eval forwards run without grad; a recompute runs in backward, with grad.
                if module.training and torch.is_grad_enabled():
                    calls["forwards"] += 1
            for layer in trainer.model.model.layers:
                layer.mlp.register_forward_pre_hook(count)

    trainer = train_in_this_process(argv, [CountLayerForwards()])
    losses = [r["loss"] for r in metric_records(out)]
    return {"losses": losses, "layer_forwards": calls["forwards"], "layers": len(trainer.model.model.layers),
            "steps": trainer.step}


def _single_process_main(work: Path) -> None:
    """Run every configuration without and with checkpointing; print the results as JSON."""
    from loretta_ds.distributed import process_group as dist

    dist.init_distributed(timeout_s=300)
    results = {}
    for method, norms in CONFIGS:
        for checkpointing in (False, True):
            key = f"{method}-norms_{norms}-{'checkpointed' if checkpointing else 'plain'}"
            results[key] = _train_in_this_process(work / key, method, norms, checkpointing, steps=4)
    dist.shutdown()
    print("RESULTS " + json.dumps(results), flush=True)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("checkpointing-one-process")
    result = subprocess.run([sys.executable, __file__, str(work)], cwd=REPO, env=clean_env(), capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.mark.slow
@pytest.mark.parametrize("method,norms", CONFIGS)
def test_checkpointed_losses_equal_plain_ones_in_one_process(single_process, method, norms):
    plain = single_process[f"{method}-norms_{norms}-plain"]
    checkpointed = single_process[f"{method}-norms_{norms}-checkpointed"]
    assert plain["steps"] == checkpointed["steps"] == 4
    # Checkpointing is really on: every decoder layer's MLP is called twice per micro batch.
    assert plain["layer_forwards"] == plain["layers"] * 4
    assert checkpointed["layer_forwards"] == 2 * plain["layer_forwards"]
    assert len(plain["losses"]) == len(checkpointed["losses"]) == 4
    for step, (a, b) in enumerate(zip(plain["losses"], checkpointed["losses"]), start=1):
        assert abs(a - b) <= TOLERANCE, (step, a, b)
    assert plain["losses"][-1] < plain["losses"][0]  # it trains


# ---------------------------------------------------------------- two processes (deepspeed launcher)

def _launch(out: Path, **flags) -> str:
    status, output = run_to_end(deepspeed_command(out, **{**TWO_PROCESS, **flags}), out.parent / f"{out.name}.log",
                                timeout=600)
    assert status == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    _launch(out)
    return out


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    return out, _launch(out, gradient_checkpointing="true")


@pytest.mark.multiprocess
def test_two_process_checkpointed_run_matches_the_plain_run(plain_run, checkpointed_run):
    out, output = checkpointed_run
    assert "gradient checkpointing: each of the 2 decoder layers" in output
    assert "packing: " in output and "efficiency" in output
    assert json.loads((out / "run_config.json").read_text())["train"]["gradient_checkpointing"] is True
    plain, checkpointed = metric_records(plain_run), metric_records(out)
    assert [r["step"] for r in checkpointed] == [r["step"] for r in plain] == list(range(1, STEPS + 1))
    assert not any(r["skipped"] for r in checkpointed)
    for a, b in zip(plain, checkpointed):
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE, (a["step"], a["loss"], b["loss"])
    assert max_difference(adapter(plain_run), adapter(out)) <= TOLERANCE


@pytest.mark.multiprocess
def test_preempted_checkpointed_run_resumes_to_the_same_adapter(checkpointed_run, tmp_path):
    reference, _ = checkpointed_run
    out = tmp_path / "run"
    # Each save waits 3 s before it completes: SIGUSR1 sent once step 2 is logged lands during
    # step 2's save, so the run stops after step 3, mid-run, however slow the machine is.
    run = Run(deepspeed_command(out, **TWO_PROCESS, gradient_checkpointing="true"), tmp_path / "interrupted.log",
              **{SAVE_DELAY_ENV: "3"})
    try:
        wait_for_step(run, out, 2, timeout=480)
        ranks = run.ranks()
        assert sorted(ranks) == [0, 1]
        ranks[1].send_signal(signal.SIGUSR1)
        status = run.wait(timeout=300)
        output = run.output()
    finally:
        run.close()
    assert status == PREEMPTED_EXIT_CODE, output[-6000:]
    stopped = metric_records(out)[-1]["step"]
    assert 2 <= stopped < STEPS and f"checkpoint at step {stopped} written" in output
    assert not (out / "adapter").exists()

    output = _launch(out, gradient_checkpointing="true", resume="auto")
    assert f"resumed from {out / 'checkpoints' / f'step-{stopped}'} at step {stopped}" in output
    assert max_difference(adapter(out), adapter(reference)) == 0.0
    resumed, uninterrupted = metric_records(out), metric_records(reference)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for mine, theirs in zip(resumed, uninterrupted):
        assert mine["loss"] == theirs["loss"], (mine["step"], mine["loss"], theirs["loss"])


if __name__ == "__main__":
    # The single-process helper: `python tests/test_gradient_checkpointing.py WORK_DIR`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _single_process_main(Path(sys.argv[1]))
