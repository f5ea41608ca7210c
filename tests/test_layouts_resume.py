"""The DeepSpeed layouts `--ds_config auto` chooses between train the same adapter, and a
checkpoint written under one layout resumes under another.

Three real 2-process runs (the deepspeed launcher, 1 node x 2 CPU processes, the built-in model),
each under one layout the planner can choose and each with packing and gradient checkpointing on,
chained through their checkpoints:

    offload     ZeRO-3, parameters and optimizer state in host memory (zero3_offload.json),
                steps 1-6: the reference, checkpoints at steps 2, 4 and 6;
    node        ZeRO-3 with hierarchical partitioning, zero_hpz_partition_size 2 (the processes of
                the node), resumes the offload run's step-2 checkpoint, checkpoints at 4 and 6;
    replicated  ZeRO-2, the frozen base whole on every process (zero2.json), resumes the node
                run's step-4 checkpoint.

A checkpoint holds the trainable tensors and their Adam moments in full (never a layout's flat
partitions), so each resumed run continues the same optimisation: its checkpoints and adapter
equal the reference's up to float summation order (the layouts reduce gradients differently).
A resume that lost the moments or the data position would differ by orders of magnitude more.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reliability_support import REPO, adapter, deepspeed_command, max_difference, metric_records, run_to_end

pytestmark = pytest.mark.multiprocess

STEPS = 6
CHAIN = dict(dataset="bundled:chat", packing="true", gradient_checkpointing="true", seq_len=128,
             micro_batch_size=2, grad_accum=1, max_steps=STEPS, save_every=2, keep_last=100, eval_every=0,
             eval_batches=1, export="false", seed=0)
# fp32 on CPU: ZeRO-2 all-reduces gradients, ZeRO-3 reduce-scatters them, in other orders.
TOLERANCE = 1e-5


def hpz_config(path: Path) -> Path:
    """The shipped ZeRO-3 config with the frozen base's secondary copy partitioned inside a node of
    two processes (what the planner writes for several nodes of two)."""
    config = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    config["zero_optimization"]["zero_hpz_partition_size"] = 2
    path.write_text(json.dumps(config))
    return path


def train(out: Path, ds_config: str, **extra) -> str:
    cmd = deepspeed_command(out, **{**CHAIN, "ds_config": ds_config, **extra})
    status, output = run_to_end(cmd, out.parent / f"{out.name}.log", timeout=600)
    assert status == 0, output[-4000:]
    return output


def checkpoint_state(out: Path, step: int) -> dict:
    path = out / "checkpoints" / f"step-{step}"
    return {**load_file(str(path / "trainable.safetensors")), **load_file(str(path / "optimizer.safetensors"))}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    base = tmp_path_factory.mktemp("layouts")
    offload, node, replicated = base / "offload", base / "node", base / "replicated"
    runs = {"offload": (offload, train(offload, str(REPO / "ds_configs" / "zero3_offload.json")))}
    runs["node"] = (node, train(node, str(hpz_config(base / "zero3_hpz2.json")),
                                resume=str(offload / "checkpoints" / "step-2")))
    runs["replicated"] = (replicated, train(replicated, str(REPO / "ds_configs" / "zero2.json"),
                                            resume=str(node / "checkpoints" / "step-4")))
    return runs


def test_each_layout_ran_with_packing_and_gradient_checkpointing(chain):
    expected = {"offload": (3, True), "replicated": (2, False), "node": (3, False)}
    for name, (out, output) in chain.items():
        stage, offloaded = expected[name]
        assert f"ZeRO stage {stage}, 2 process(es)" in output, (name, output[-3000:])
        zero = json.loads((out / "run_config.json").read_text())["ds_config"]["zero_optimization"]
        assert zero["stage"] == stage and ("offload_param" in zero) == offloaded, (name, zero)
        if name == "node":
            assert zero["zero_hpz_partition_size"] == 2
        assert "packing: " in output, name
        assert "gradient checkpointing" in output.lower(), name
        train_steps = [r["step"] for r in metric_records(out)]
        assert train_steps[-1] == STEPS and not any(r["skipped"] for r in metric_records(out)), name


def test_a_checkpoint_resumes_under_another_layout_to_the_same_state(chain):
    reference, _ = chain["offload"]
    node, node_log = chain["node"]
    replicated, replicated_log = chain["replicated"]
    assert "at step 2" in node_log and "at step 4" in replicated_log
    # Trainable tensors and Adam moments two steps after each change of layout...
    diffs = {"offload -> node, step 4": max_difference(checkpoint_state(node, 4), checkpoint_state(reference, 4)),
             "node -> replicated, step 6": max_difference(checkpoint_state(replicated, 6),
                                                          checkpoint_state(reference, 6))}
    # ... and the adapters at the end.
    diffs["node adapter"] = max_difference(adapter(node), adapter(reference))
    diffs["replicated adapter"] = max_difference(adapter(replicated), adapter(reference))
    print("max abs difference from the offload run: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
    # The runs trained: the adapter moved away from its initial value (B's last core is zero).
    assert any((v != 0).any() for k, v in adapter(reference).items() if k.endswith("loretta_B.tt_cores"))
