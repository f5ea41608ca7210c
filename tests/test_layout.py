"""--ds_config auto: the layout chosen for LLaMA-2 shapes on GPU clusters, the traffic model's figures
against hand-computed ones, hpZ's size in the shipped ZeRO-3 configs. A real auto run that records
its layout and continues under another is in tests/test_layouts_resume.py."""
import json
from dataclasses import replace

import pytest

from loretta_ds import LorettaConfig, count_parameters, inject
from loretta_ds.cli import main as cli_main
from loretta_ds.distributed.ds_config import RunFacts, load_ds_config, resolve_ds_config
from loretta_ds.estimate import Setup, estimate_memory
from loretta_ds.layout import GIB, Hardware, choose_layout, fit_layout
from loretta_ds.models import meta_model
from loretta_ds.traffic import Bandwidths, step_traffic
from tiny_models import tiny_llama_config

H100 = ["--gpu_memory", "80", "--host_memory", "2048", "--bf16", "true", "--seq_len", "4096",
        "--gradient_checkpointing", "true"]


def plan_layout(capsys, *flags: str) -> dict:
    assert cli_main(["plan", "--ds_config", "auto", *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- the choice, LLaMA-2 shapes

@pytest.mark.parametrize("model", ["llama2-7b", "llama2-13b"])
def test_one_node_of_80gb_replicates_7b_and_13b(capsys, model):
    plan = plan_layout(capsys, "--model", model, "--gpus_per_node", "8", *H100)
    layout = plan["layout"]
    assert layout["chosen"] == "replicated" and plan["ds_config"]["zero_optimization"]["stage"] == 2
    assert "fit one device" in layout["reason"] and "no frozen weight moves" in layout["reason"]
    names = [c["name"] for c in layout["candidates"]]
    assert names == ["replicated", "node", "offload"]  # one node: no across-nodes layout
    replicated = layout["candidates"][0]
    assert replicated["fits"] and replicated["device_need_bytes"] <= 80 * GIB
    # Only the trainable tensors move: nothing crosses PCIe, and there is no other node.
    assert replicated["traffic"]["pcie_bytes"] == 0 and replicated["traffic"]["cross_node_bytes_per_node"] == 0
    assert plan["shape_only"] is True and plan["ds_config"]["bf16"]["enabled"] is True


def test_four_nodes_partition_70b_inside_each_node(capsys):
    plan = plan_layout(capsys, "--model", "llama2-70b", "--nodes", "4", "--gpus_per_node", "8", *H100)
    layout = plan["layout"]
    assert layout["chosen"] == "node" and layout["zero_hpz_partition_size"] == 8
    assert plan["ds_config"]["zero_optimization"]["stage"] == 3
    assert plan["ds_config"]["zero_optimization"]["zero_hpz_partition_size"] == 8
    assert "offload_param" not in plan["ds_config"]["zero_optimization"]
    assert "does not fit" in layout["reason"]
    assert "no frozen weight crosses nodes after the first step" in layout["reason"]
    by_name = {c["name"]: c for c in layout["candidates"]}
    assert not by_name["replicated"]["fits"] and by_name["all_nodes"]["fits"] and by_name["offload"]["fits"]
    # After the first step, only the trainable tensors cross nodes with hpZ; without it the frozen
    # base (about 138 GB in bf16) crosses every step.
    node, across = by_name["node"]["traffic"], by_name["all_nodes"]["traffic"]
    assert node["cross_node_bytes_per_node"] == by_name["replicated"]["traffic"]["cross_node_bytes_per_node"]
    assert node["cross_node_bytes_per_node"] < 16 * node["trainable_bytes"]
    assert across["cross_node_bytes_per_node"] > 100e9
    assert node["first_step_cross_node_bytes_per_node"] > 100e9


def test_two_single_gpu_nodes_of_24gb_offload_70b(capsys):
    plan = plan_layout(capsys, "--model", "llama2-70b", "--nodes", "2", "--gpus_per_node", "1", "--micro_batch_size",
                       "1", "--grad_accum", "8", *H100[:1], "24", *H100[2:])
    layout = plan["layout"]
    assert layout["chosen"] == "offload" and layout["zero_hpz_partition_size"] == 1  # one GPU per node: no hpZ
    zero = plan["ds_config"]["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu" and zero["zero_hpz_partition_size"] == 1
    assert layout["reason"].startswith("nothing fits without offload")
    assert [c["name"] for c in layout["candidates"]] == ["replicated", "all_nodes", "offload"]
    assert plan["ds_config"]["gradient_accumulation_steps"] == 8


def test_an_impossible_run_is_refused_with_the_figures(capsys):
    code = cli_main(["plan", "--ds_config", "auto", "--model", "llama2-70b", "--gpus_per_node", "1",
                     "--gpu_memory", "24", "--host_memory", "64", "--bf16", "true", "--seq_len", "4096"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no DeepSpeed layout fits this run" in err
    assert "replicated " in err and "offload " in err and "GiB per device of 24.0 GiB" in err
    assert "host memory per node of 64.0 GiB" in err and "--gradient_checkpointing" in err


def test_the_choice_follows_the_memory_plan():
    """The layout is chosen from the estimator's figures: just below the replicated plan's need the
    next layout is chosen, at it the replicated one."""
    config, cfg = tiny_llama_config(hidden=256, layers=4, intermediate=688, vocab=1024), LorettaConfig()
    # A small gathering window, so that partitioning pays off even for this small model.
    base = Setup(bf16=True, seq_len=64, micro_batch_size=1, max_live_parameters=10_000, max_reuse_distance=10_000)
    roomy = choose_layout(config, cfg, Hardware(1, 2, 4 * GIB, 64 * GIB, "given", "given"), base)
    need = roomy.candidates[0].device_need
    assert need == roomy.candidates[0].estimate.gpu_total_bytes + 2 * GIB  # the reserve's floor
    exact = choose_layout(config, cfg, Hardware(1, 2, need, 64 * GIB, "given", "given"), base)
    short = choose_layout(config, cfg, Hardware(1, 2, need - 1, 64 * GIB, "given", "given"), base)
    assert exact.chosen.name == "replicated" and short.chosen.name == "node"
    assert any("--gradient_checkpointing" in note for note in short.notes)


@pytest.mark.slow  # the trainer's plan reads the tokenizer and prepares the bundled data: seconds
def test_train_plan_and_estimate_make_the_same_choice(tmp_path, capsys):
    """The trainer's own plan (model, tokenizer, data) and `estimate` choose alike from the same figures."""
    flags = ["--ds_config", "auto", "--gpu_memory", "3", "--seq_len", "128"]
    assert cli_main(["plan", "--model", "tiny-llama", "--world_size", "2", *flags,
                     "--output_dir", str(tmp_path / "run"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layout"]["chosen"] == "replicated" and plan["zero_stage"] == 2
    assert plan["start"] == "a new run from step 0"
    assert cli_main(["estimate", "--model", "tiny-llama", "--gpus_per_node", "2", *flags, "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["layout"]["chosen"] == "replicated" and estimate["setup"]["zero_stage"] == 2
    needs = lambda layout: [(c["name"], c["device_need_bytes"]) for c in layout["candidates"]]  # noqa: E731
    assert needs(estimate["layout"]) == needs(plan["layout"])
    assert estimate["traffic"]["cross_node_bytes_per_node"] == 0 and estimate["traffic"]["pcie_bytes"] == 0
    assert cli_main(["estimate", "--model", "tiny-llama", "--gpus_per_node", "2", *flags]) == 0
    out = capsys.readouterr().out
    assert out.startswith("layout auto: replicated") and "traffic per optimizer step" in out
    assert "DeepSpeed config auto (zero2)" in out and "ZeRO-2, offload none" in out


# ---------------------------------------------------------------- the traffic model, by hand

def test_traffic_matches_hand_computed_bytes():
    """2 nodes x 2 GPUs, fp32, 2 micro batches per step, every parameter partitioned (threshold 0)
    and none kept between forward and backward (reuse distance 1)."""
    config, cfg = tiny_llama_config(), LorettaConfig()
    model = inject(meta_model(config), cfg)
    trainable, total = count_parameters(model)
    T, F = 4 * trainable, 4 * total  # fp32 bytes
    accum, nodes, gpus = 2, 2, 2
    setup = Setup(nodes=nodes, gpus_per_node=gpus, bf16=False, seq_len=32, param_persistence_threshold=0,
                  max_reuse_distance=1, zero_stage=2)
    # A collective of S bytes: S (G-1)/G over NVLink and S (N-1)/(N G) over the network, per GPU.
    sync = (accum + 1) * T  # gradients reduce-scattered per micro batch, updates gathered per step
    replicated = step_traffic(estimate_memory(config, cfg, setup), config, accum)
    assert replicated.intra_node_bytes == pytest.approx(sync / 2, abs=4)
    assert replicated.cross_node_bytes == pytest.approx(sync / 4, abs=4)
    assert replicated.cross_node_bytes_per_node == pytest.approx(sync / 2, abs=8)
    assert replicated.pcie_bytes == 0

    gathers = accum * 2 * F  # forward and backward of each micro batch
    zero3 = step_traffic(estimate_memory(config, cfg, replace(setup, zero_stage=3)), config, accum)
    assert zero3.intra_node_bytes == pytest.approx((sync + gathers) / 2, abs=8)
    assert zero3.cross_node_bytes == pytest.approx((sync + gathers) / 4, abs=8)

    hpz = step_traffic(estimate_memory(config, cfg, replace(setup, zero_stage=3, hpz_partition_size=2)), config, accum)
    assert hpz.cross_node_bytes == replicated.cross_node_bytes  # only the trainable tensors cross
    assert hpz.intra_node_bytes == pytest.approx((sync + gathers) / 2, abs=8)
    assert hpz.first_step_cross_node_bytes_per_node == pytest.approx(F / 2, abs=8)

    offload = step_traffic(estimate_memory(config, cfg, replace(setup, zero_stage=3, offload="param+optimizer")),
                           config, accum)
    # Each GPU copies its quarter of every gather from the host, and its gradient / update partitions.
    assert offload.pcie_bytes == pytest.approx(gathers / 4 + (accum + 1) * T / 4, abs=8)
    offload_hpz = step_traffic(estimate_memory(config, cfg, replace(setup, zero_stage=3, offload="param+optimizer",
                                                                    hpz_partition_size=2)), config, accum)
    assert offload_hpz.pcie_bytes == pytest.approx(gathers / 2 + (accum + 1) * T / 4, abs=8)  # the node's half

    # Times: bytes over the stated bandwidths; compute: 2 x matmul parameters (all but the input
    # embedding) + 2 L s h per token forward, the same + 2 L s h more backward.
    bandwidths = Bandwidths(pcie=1e9, nvlink=2e9, network=0.5e9, tflops=1.0, utilization=0.5)
    timed = step_traffic(estimate_memory(config, cfg, replace(setup, zero_stage=3, offload="param+optimizer")),
                         config, accum, bandwidths)
    assert timed.communication_s == pytest.approx(
        offload.pcie_bytes / 1e9 + offload.intra_node_bytes / 2e9 + offload.cross_node_bytes / 0.5e9)
    matmul = total - config.vocab_size * config.hidden_size
    attention = 2 * config.num_hidden_layers * 32 * config.hidden_size
    flops = accum * 32 * ((2 * matmul + attention) + (2 * matmul + 2 * attention))
    assert timed.flops == flops and timed.compute_s == pytest.approx(flops / 0.5e12)
    assert timed.step_s_range == (max(timed.compute_s, timed.communication_s),
                                  timed.compute_s + timed.communication_s)


# ---------------------------------------------------------------- hpZ in the shipped ZeRO-3 configs

def _facts(world: int, **changes) -> RunFacts:
    return RunFacts(world_size=world, lr=None, warmup_steps=None, total_steps=10, grad_clip=None, bf16=None,
                    hidden_size=64, max_trainable_numel=1000, total_trainable_numel=5000, **changes)


def test_shipped_zero3_configs_fill_hpz_from_the_run():
    for name in ("zero3", "zero3_offload"):
        assert load_ds_config(name)["zero_optimization"]["zero_hpz_partition_size"] == "auto"
        resolved, _ = resolve_ds_config(load_ds_config(name), _facts(8, hpz_partition_size=4))
        assert resolved["zero_optimization"]["zero_hpz_partition_size"] == 4
        resolved, _ = resolve_ds_config(load_ds_config(name), _facts(4))
        assert resolved["zero_optimization"]["zero_hpz_partition_size"] == 1  # one node: none
    config = load_ds_config("zero3")
    config["zero_optimization"]["zero_hpz_partition_size"] = 4
    with pytest.raises(ValueError, match="zero_hpz_partition_size 4 needs ZeRO stage 3 and a world size it divides"):
        resolve_ds_config(config, _facts(6))


def test_hpz_is_sized_where_its_copy_fits():
    config, cfg = tiny_llama_config(hidden=256, layers=4, intermediate=688, vocab=1024), LorettaConfig()
    model = inject(meta_model(config), cfg)
    numels = [p.numel() for p in model.parameters() if p.requires_grad]
    frozen = tuple(p.numel() for p in model.parameters() if not p.requires_grad)
    facts = RunFacts(world_size=8, lr=None, warmup_steps=None, total_steps=10, grad_clip=None, bf16=None,
                     hidden_size=256, max_trainable_numel=max(numels), total_trainable_numel=sum(numels),
                     frozen_numels=frozen)

    def fitted(device_bytes: int, per_node: int = 4):
        hardware = Hardware(8 // per_node, per_node, device_bytes, 64 * GIB, "given", "given")
        return fit_layout(load_ds_config("zero3"), facts, config, cfg, seq_len=64, gradient_checkpointing=False,
                          per_node=per_node, hardware=hardware)

    roomy = fitted(8 * GIB)
    assert roomy.facts.hpz_partition_size == 4 and "gathered inside each node" in roomy.notes[0]
    tight = fitted(2 * GIB + 1)  # the reserve's floor leaves nothing for the copy
    assert tight.facts.hpz_partition_size == 1 and "the hpZ copy does not fit" in tight.notes[0]
    one_node = fitted(8 * GIB, per_node=8)
    assert one_node.facts.hpz_partition_size == 1 and one_node.notes == ()
    resolved, _ = resolve_ds_config(roomy.ds_config, roomy.facts)
    assert resolved["zero_optimization"]["zero_hpz_partition_size"] == 4
