"""A 4-bit frozen base (--load_in_4bit): the byte counts, the memory plan, a real run of the built-in
model that trains, checkpoints, resumes, exports and reloads in stock libraries (one process and
two ranks under ZeRO-3 with offload), and the refusal without the optional extra."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from loretta_ds import LorettaConfig
from loretta_ds.estimate import Setup, estimate_memory, verdict
from loretta_ds.models import load_model_config, meta_model
from loretta_ds.quantization import (EXTRA, QuantSpec, bytes_per_parameter, packed_numel, quantized_bytes,
                                     quantized_linear_names, state_bytes)

from reliability_support import REPO, clean_env, deepspeed_command, flags, run_to_end, single_command

bnb = pytest.importorskip("bitsandbytes")
GIB = 2**30


@pytest.mark.parametrize("double_quant", [True, False])
def test_counted_bytes_are_what_bitsandbytes_holds(double_quant):
    layer = bnb.nn.Linear4bit(512, 384, bias=False, compute_dtype=torch.float32, compress_statistics=double_quant,
                              quant_type="nf4", quant_storage=torch.bfloat16).to("cpu")  # quantized on the move
    weight = layer.weight
    numel = 512 * 384
    assert weight.numel() == packed_numel(numel, 2)  # the storage tensor ZeRO-3 partitions
    assert state_bytes(weight) == quantized_bytes(numel, double_quant)
    assert abs(quantized_bytes(10**9, double_quant) / 10**9 - bytes_per_parameter(double_quant)) < 1e-5


def test_the_plan_counts_the_quantized_weights_as_packed_codes_and_keeps_the_rest():
    config = load_model_config("tiny-llama")
    cfg = LorettaConfig(method="rep")
    # Threshold 0: every frozen tensor is partitioned, so its bytes show in the partition.
    full = estimate_memory(config, cfg, Setup(gpus_per_node=2, bf16=True, param_persistence_threshold=0))
    quant = estimate_memory(config, cfg, Setup(gpus_per_node=2, bf16=True, param_persistence_threshold=0,
                                               load_in_4bit=True))
    model = meta_model(config)
    names = quantized_linear_names(model)
    assert model.get_output_embeddings() is not None and "lm_head" not in names and len(names) == 7 * config.num_hidden_layers
    quantized = sum(model.get_submodule(n).weight.numel() for n in names)
    rest = full.frozen_params - quantized  # embeddings and head (the norms train)
    assert full.frozen_partition_bytes == 2 * (quantized + rest) // 2
    assert quant.frozen_partition_bytes == 2 * (sum(packed_numel(model.get_submodule(n).weight.numel(), 2)
                                                    for n in names) + rest) // 2
    assert (quant.total_params, quant.trainable_params) == (full.total_params, full.trainable_params)
    scales = sum(quantized_bytes(model.get_submodule(n).weight.numel()) - model.get_submodule(n).weight.numel() // 2
                 for n in names)
    largest = max(model.get_submodule(n).weight.numel() for n in names)
    assert quant.quantization_bytes == scales + 2 * largest and full.quantization_bytes == 0


def test_4bit_settings_are_part_of_the_runs_identity_and_verify_frozen_is_refused():
    from loretta_ds.run_config import config_from_args, identity
    from loretta_ds.train_plan import check_quantized_run

    plain, quantized = config_from_args({}), config_from_args({"load_in_4bit": "true"})
    assert identity(plain.flat()) != identity(quantized.flat())  # a run dir refuses to continue under the other
    assert identity(quantized.flat()) != identity(config_from_args({"load_in_4bit": True,
                                                                   "bnb_4bit_quant_type": "fp4"}).flat())
    assert identity({})["load_in_4bit"] is False  # a record written before the flag: a full-precision base
    check_quantized_run(quantized)
    with pytest.raises(ValueError, match="--verify_frozen"):
        check_quantized_run(config_from_args({"load_in_4bit": True, "verify_frozen": True}))
    spec = QuantSpec.for_run("nf4", True, None, bf16=True)
    assert (spec.compute_dtype, spec.weight_dtype, spec.storage_dtype) == ("bfloat16", "bfloat16", torch.bfloat16)
    assert QuantSpec.from_dict({**spec.to_dict(), "weights": ["x.weight"]}) == spec


@pytest.mark.slow
def test_llama2_70b_fits_two_40gb_and_one_80gb_gpus_only_in_4_bits():
    config = load_model_config("llama2-70b")
    cfg = LorettaConfig(method="rep")
    fits = {}
    for gpus, memory in ((2, 40), (1, 80)):
        for four_bit in (False, True):
            setup = Setup(gpus_per_node=gpus, seq_len=2048, gradient_checkpointing=True, load_in_4bit=four_bit)
            e = estimate_memory(config, cfg, setup, model_name="llama2-70b")
            fits[gpus, four_bit] = verdict(e, memory * GIB).fits
            if four_bit:
                # 4.5 bits per quantized weight against 16: the partition shrinks about 3.5 times.
                assert 3 < full.frozen_partition_bytes / e.frozen_partition_bytes < 4
            full = e
    assert fits == {(2, False): False, (2, True): True, (1, False): False, (1, True): True}


@pytest.mark.slow
def test_without_bitsandbytes_4_bits_are_planned_and_training_is_refused(tmp_path):
    """Counting needs no bitsandbytes; training without it is refused, naming the extra, before any
    model loads and before anything is written (bitsandbytes hidden from a real subprocess)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        class HideBitsandbytes:
            def find_spec(self, name, path=None, target=None):
                if name == "bitsandbytes" or name.startswith("bitsandbytes."):
                    raise ModuleNotFoundError("No module named 'bitsandbytes'", name=name)
                return None

        sys.meta_path.insert(0, HideBitsandbytes())
    """))
    env = clean_env(PYTHONPATH=f"{blocker}:{REPO}")
    cli = [sys.executable, "-m", "loretta_ds.cli"]
    out = tmp_path / "run"
    train = subprocess.run([*cli, "train", "--load_in_4bit", *flags(out)], env=env, capture_output=True,
                           text=True, timeout=900)
    assert train.returncode == 2, train.stderr[-2000:]
    assert f"'{EXTRA}'" in train.stderr and "loretta_ds[qlora]" in train.stderr and "Traceback" not in train.stderr
    assert "Loading weights" not in train.stderr + train.stdout and not out.exists()
    estimate = subprocess.run([*cli, "estimate", "--model", "llama2-7b", "--load_in_4bit", "--json"], env=env,
                              capture_output=True, text=True, timeout=900)
    assert estimate.returncode == 0, estimate.stderr[-2000:]
    assert json.loads(estimate.stdout)["quantization_bytes"] > 0


def _adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter.safetensors")


@pytest.mark.slow
def test_a_4bit_run_trains_resumes_bit_exactly_and_exports(tmp_path):
    from safetensors.torch import load_file

    from loretta_ds.commands.generate import load_for_generation
    from loretta_ds.export import export
    from loretta_ds.export.base_weights import open_base_checkpoint
    from loretta_ds.quantization import is_quantized

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    settings = dict(max_steps=4, save_every=2, eval_every=4, load_in_4bit="true", export="true")
    code, output = run_to_end(single_command(straight, **settings), tmp_path / "straight.log", timeout=1200)
    assert code == 0, output[-3000:]
    assert "4-bit NF4 base (double quantization" in output
    report = json.loads((straight / "param_report.json").read_text())
    # Only the TT cores (and norms) train; the 4-bit weights are frozen and partitioned by ZeRO-3.
    assert report["frozen_partitioned_tensors"] >= 14 and report["trainable_all_whole"]
    meta = json.loads((straight / "adapter" / "adapter_config.json").read_text())
    spec = QuantSpec.from_dict(meta["base_quantization"])
    assert spec == QuantSpec("nf4", True, "float32", "float32") and len(meta["base_quantization"]["weights"]) == 14
    assert all(t.dtype == torch.float32 for t in _adapter(straight).values())

    code, output = run_to_end(single_command(resumed, resume=str(straight / "checkpoints" / "step-2"),
                                             **{**settings, "export": "false"}), tmp_path / "resumed.log", timeout=1200)
    assert code == 0, output[-3000:]
    first, second = _adapter(straight), _adapter(resumed)
    assert all(torch.equal(first[name], second[name]) for name in first)

    # The merged export holds the weights the 4-bit model computed with, dequantized, plus the
    # update: its logits match the 4-bit base + adapter.
    verified = export(straight, tmp_path / "merged", format="merged", verify=True, log=lambda m: None).verify
    assert verified.ok and verified.max_abs_diff < 1e-5 * verified.max_abs_logit
    # ... and not the original weights: merging into those would differ from what the run trained.
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    original = open_base_checkpoint(Path(meta["base"]["_name_or_path"]))
    name = "model.layers.0.mlp.gate_proj.weight"  # not adapted (rep's default targets): only dequantized
    info = original.tensors[name]
    with original.open_shard(info.file) as reader:
        weight = reader.read_rows(info, 0, info.rows).clone()
    assert torch.equal(merged[name], spec.roundtrip(weight)) and not torch.equal(merged[name], weight)
    assert torch.equal(load_file(straight / "merged" / "model.safetensors")[name], merged[name])  # the run's own

    # The PEFT LoRA export loads with stock PEFT on the same 4-bit base and gives the same logits.
    lora = export(straight, tmp_path / "lora", format="peft-lora", verify=True, log=lambda m: None).verify
    assert lora.ok and lora.max_abs_diff == 0.0
    model, _, description = load_for_generation(straight)
    assert any(is_quantized(p) for p in model.parameters()) and "LoRETTA_rep" in description


@pytest.mark.multiprocess
def test_two_ranks_train_a_4bit_base_under_zero3_offload_and_export(tmp_path):
    """The default layout (zero3_offload: parameters and optimizer offloaded to the host) on a 4-bit
    base: the offloaded partitions are the packed codes' storage tensors, gathered back as they are
    (the one-process ZeRO-3 run above covers ZeRO-3 without offload)."""
    from loretta_ds.export import export

    out = tmp_path / "run"
    code, output = run_to_end(deepspeed_command(out, max_steps=2, save_every=2,  # ds_config: zero3_offload
                                                load_in_4bit="true", export="true"), tmp_path / "run.log", timeout=1200)
    assert code == 0, output[-3000:]
    zero = json.loads((out / "run_config.json").read_text())["ds_config"]["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    report = json.loads((out / "param_report.json").read_text())
    assert report["world_size"] == 2 and report["zero_stage"] == 3 and report["frozen_partitioned_tensors"] >= 14
    assert (out / "checkpoints" / "step-2").is_dir() and (out / "merged" / "model.safetensors").is_file()
    verified = export(out, tmp_path / "lora", format="peft-lora", verify=True, log=lambda m: None).verify
    assert verified.ok and verified.max_abs_diff == 0.0
