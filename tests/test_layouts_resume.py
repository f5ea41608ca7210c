"""The DeepSpeed layouts `--ds_config auto` chooses between train the same adapter, and a
checkpoint written under one layout resumes under another.

Three real 2-process runs (the deepspeed launcher, 1 node x 2 CPU processes, the built-in model),
each under one layout the planner can choose and each with packing and gradient checkpointing on,
chained through their checkpoints:

    offload     ZeRO-3, parameters and optimizer state in host memory (zero3_offload.json),
                steps 1-6: the reference, checkpoints at steps 2, 4 and 6;
    node        ZeRO-3 with hierarchical partitioning, zero_hpz_partition_size 2 (the processes of
                the node), resumes the offload run's step-2 checkpoint, checkpoints at 4 and 6;
    replicated  ZeRO-2, the frozen base whole on every process, chosen by --ds_config auto (the
                planner's pick for this model on this machine), resumes the node run's step-4
                checkpoint, and exports the merged model at the end.

Then one process continues the replicated run to step 8 with --ds_config auto and a device too small
for the replicated layout (--gpu_memory): auto picks ZeRO-3 offload, and the run resumes.

A checkpoint holds the trainable tensors and their Adam moments in full (never a layout's flat
partitions), so each resumed run continues the same optimisation: its checkpoints and adapter
equal the reference's up to float summation order (the layouts reduce gradients differently).
A resume that lost the moments or the data position would differ by orders of magnitude more.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loretta_ds.cli import main as cli_main
from loretta_ds.layout import GIB
from reliability_support import (REPO, adapter, deepspeed_command, max_difference, metric_records, run_to_end,
                                 single_command)

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
    # --ds_config auto: on this CPU machine the tiny model fits every process, so the planner
    # replicates it (ZeRO-2), the layout of zero2.json.
    runs["replicated"] = (replicated, train(replicated, "auto", resume=str(node / "checkpoints" / "step-4"),
                                            export="true"))
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


def test_the_merged_export_carries_the_chat_template_the_run_trained_with(chain):
    from transformers import AutoTokenizer

    from loretta_ds.data.chat import DEFAULT_CHAT_TEMPLATE

    replicated, _ = chain["replicated"]
    # tiny-llama has no chat template of its own: the run trained with the default one, which the
    # export must carry (a chat model exported without it would prompt in another format).
    merged = AutoTokenizer.from_pretrained(replicated / "merged")
    assert merged.chat_template == DEFAULT_CHAT_TEMPLATE
    assert merged.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                      add_generation_prompt=True) == "<s>### User:\nHi\n\n### Assistant:\n"


def test_auto_records_its_choice_and_a_smaller_device_continues_under_another(chain, capsys):
    replicated, output = chain["replicated"]
    assert "layout auto: replicated (frozen base replicated on every process (ZeRO-2))" in output
    record = json.loads((replicated / "run_config.json").read_text())
    layout = record["layout"]
    assert layout["chosen"] == "replicated" and layout["ds_config"] == "zero2" and "fit one device" in layout["reason"]
    assert record["zero_stage"] == 2 and record["train"]["ds_config"] == "auto" and record["world_size"] == 2
    hardware = layout["hardware"]
    assert hardware["processes_per_node"] == 2 and hardware["device_is_host"] is True  # no CUDA: RAM / 2
    assert [c["name"] for c in layout["candidates"]] == ["replicated", "node", "offload"]
    assert json.loads((replicated / "param_report.json").read_text())["partitioned"]["tensors"] == 0  # all whole

    # One process: a device between the offload layout's need and the replicated one's.
    probe = ["plan", "--check", "layout", "--ds_config", "auto", "--world_size", "1", "--gpu_memory", "4",
             "--seq_len", str(CHAIN["seq_len"]), "--micro_batch_size", str(CHAIN["micro_batch_size"]),
             "--grad_accum", "2", "--gradient_checkpointing", "true", "--output_dir", str(replicated.parent / "probe"),
             "--json"]
    assert cli_main(probe) == 0
    needs = {c["name"]: c["device_need_bytes"] for c in json.loads(capsys.readouterr().out)["layout"]["candidates"]}
    assert needs["offload"] < needs["replicated"]
    device_gib = f"{(needs['offload'] + needs['replicated']) / 2 / GIB:.12f}"
    continued = replicated.parent / "continued"  # a copy: the other tests read the replicated run as it ended
    shutil.copytree(replicated, continued)
    # The same global batch of 4: one process accumulates the two ranks' micro batches.
    flags = {**CHAIN, "ds_config": "auto", "max_steps": STEPS + 2, "grad_accum": 2, "export": "false",
             "gpu_memory": device_gib}
    status, output = run_to_end(single_command(continued, **flags), continued.parent / "continued.log", timeout=600)
    assert status == 0, output[-4000:]
    assert "layout auto: offload" in output and f"at step {STEPS}" in output
    record = json.loads((continued / "run_config.json").read_text())
    assert record["layout"]["chosen"] == "offload" and record["zero_stage"] == 3 and record["finished"] is True
    # The replicated run started from the node run's step 4: its log holds steps 5 to 8, each once.
    assert [r["step"] for r in metric_records(continued)] == list(range(5, STEPS + 3))
