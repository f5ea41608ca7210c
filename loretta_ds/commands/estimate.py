"""`loretta-ds estimate`: per-GPU and per-node memory of a LoRETTA run under ZeRO-3, beside DeepSpeed's estimate."""
from __future__ import annotations

import argparse
import json
import math

from ..run_config import add_train_settings, train_settings_from_args
from .count import add_loretta_arguments, loretta_config_from_args

# The settings estimate shares with train: declared once (run_config.TrainConfig), train's help and default.
RUN_SETTINGS = ("ds_config", "gpu_memory", "host_memory", "micro_batch_size", "seq_len", "bf16",
                "gradient_checkpointing", "load_in_4bit", "bnb_4bit_use_double_quant")
BANDWIDTH_FLAGS = ("pcie_gbps", "nvlink_gbps", "network_gbps", "gpu_tflops", "utilization")


def add_bandwidth_arguments(parser: argparse.ArgumentParser) -> None:
    """The hardware the traffic model's step times are for (estimate and plan); defaults: an H100
    SXM node (loretta_ds.traffic)."""
    from ..traffic import (DEFAULT_UTILIZATION, H100_BF16_TFLOPS, H100_FP32_TFLOPS, INFINIBAND_NDR, NVLINK4,
                           PCIE_GEN5_X16)

    group = parser.add_argument_group("step time (traffic model: docs/layouts.md)")
    group.add_argument("--pcie_gbps", type=float, default=PCIE_GEN5_X16 / 1e9,
                       help=f"GB/s per GPU to the host, one direction (default {PCIE_GEN5_X16 / 1e9:g}: "
                            "PCIe Gen5 x16)")
    group.add_argument("--nvlink_gbps", type=float, default=NVLINK4 / 1e9,
                       help=f"GB/s per GPU inside a node, one direction (default {NVLINK4 / 1e9:g}: NVLink 4)")
    group.add_argument("--network_gbps", type=float, default=INFINIBAND_NDR / 1e9,
                       help=f"GB/s per GPU across nodes, one direction (default {INFINIBAND_NDR / 1e9:g}: "
                            "InfiniBand NDR 400 Gb/s, one adapter per GPU)")
    group.add_argument("--gpu_tflops", type=float, default=None,
                       help=f"peak TFLOPS of one GPU in the run's precision (default: H100 SXM, "
                            f"{H100_BF16_TFLOPS:g} bf16, {H100_FP32_TFLOPS:g} fp32)")
    group.add_argument("--utilization", type=float, default=DEFAULT_UTILIZATION,
                       help=f"share of the peak the step reaches (default {DEFAULT_UTILIZATION:g})")


def bandwidths_from_args(args: argparse.Namespace):
    from ..traffic import Bandwidths

    return Bandwidths(pcie=args.pcie_gbps * 1e9, nvlink=args.nvlink_gbps * 1e9, network=args.network_gbps * 1e9,
                      tflops=args.gpu_tflops, utilization=args.utilization)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_loretta_arguments(parser)
    add_train_settings(parser.add_argument_group("the run (as train takes it)"), RUN_SETTINGS)
    run = parser.add_argument_group("the job and DeepSpeed")
    run.add_argument("--nodes", type=int, default=1, help="nodes in the job (default 1)")
    run.add_argument("--gpus_per_node", type=int, default=8, help="GPUs per node, one process each (default 8)")
    run.add_argument("--offload", default=None,
                     help="what ZeRO-3 keeps in host memory, replacing the ds_config's: none | optimizer | "
                          "param+optimizer (the frozen weights' partitions too) (default: the ds_config's)")
    run.add_argument("--param_persistence_threshold", type=int, default=None,
                     help="DeepSpeed stage3_param_persistence_threshold: parameters this small stay whole "
                          "on every GPU (default: the ds_config's, as train raises it)")
    add_bandwidth_arguments(parser)
    run.add_argument("--json", action="store_true", help="print the estimate and the verdict as JSON")


def _gib(n: int) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (the small adapter figures stay readable)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:10.2f} {unit}"
    return f"{n:10d} B  "


def _gathered_note(e) -> str:
    """What bounds the gathered weights and how to lower them, unless they are the whole partitioned model."""
    s = e.setup
    if s.zero_stage != 3 or \
            e.gathered_bytes >= (e.frozen_params + e.trainable_params - e.persistent_params) * s.compute_bytes:
        return ""
    return (f"    (ZeRO-3's prefetch fills stage3_max_live_parameters, {s.max_live_parameters:,}, and "
            f"stage3_max_reuse_distance, {s.max_reuse_distance:,}, keeps the weights reused within it: "
            "lower both to shrink it)")


def format_estimate(e) -> str:
    s, ds = e.setup, e.deepspeed
    gpu_optimizer = e.optimizer_bytes if s.offload == "none" else 0
    gpu_partition = 0 if s.offload == "param+optimizer" else e.frozen_partition_bytes + e.trainable_partition_bytes
    where = ", in host memory" if s.offload == "param+optimizer" else ""
    secondary = (f"\n    {f'hpZ copy (1/{s.hpz_partition_size}{where})':<28}{_gib(e.secondary_partition_bytes)}"
                 if e.secondary_partition_bytes else "")
    act = e.activation_terms
    lines = [
        f"{e.model}: LoRETTA_{e.method}, {s.nodes} node(s) x {s.gpus_per_node} GPU(s) = {s.world_size}, "
        f"ZeRO-{s.zero_stage}{f' hpZ {s.hpz_partition_size}' if s.hpz_partition_size > 1 else ''}, offload "
        f"{s.offload}, {'bf16' if s.bf16 else 'fp32'}"
        f"{', 4-bit base' + (' (double quantization)' if s.double_quant else '') if s.load_in_4bit else ''}, "
        f"micro batch {s.micro_batch_size} x "
        f"seq {s.seq_len}, gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}",
        f"  parameters: {e.total_params:,} total, {e.trainable_params:,} trainable "
        f"({100 * e.trainable_params / e.total_params:.4f}%), {e.persistent_params:,} persistent (<= threshold)",
        "",
        "  per GPU                          LoRETTA",
        f"    {'frozen weights (' + ('partition' if s.zero_stage == 3 else 'whole') + ')':<28}{_gib(gpu_partition)}",
        f"    persistent (adapter, norms) {_gib(e.persistent_bytes)}{secondary}",
        f"    gathered weights (working)  {_gib(e.gathered_bytes)}" + _gathered_note(e),
        *([f"    4-bit scales, dequantized   {_gib(e.quantization_bytes)}"] if s.load_in_4bit else []),
        f"    gradients                   {_gib(e.gradient_bytes)}",
        f"    optimizer state             {_gib(gpu_optimizer)}",
        f"    model states                {_gib(e.gpu_model_state_bytes)}    DeepSpeed all-trainable: {_gib(ds.gpu_bytes)}",
        f"    activations                 {_gib(e.activation_bytes)}    "
        f"({act['bytes_per_token'] / 2**20:.2f} MiB/token x {act['tokens']} tokens)",
        f"    total                       {_gib(e.gpu_total_bytes)}",
        "",
        f"  host per node (offload)       {_gib(e.host_bytes_per_node)}    DeepSpeed all-trainable: "
        f"{_gib(ds.host_bytes_per_node)}",
        f"  adapter file                  {_gib(e.adapter_file_bytes)}    full model weights:      "
        f"{_gib(e.total_params * s.compute_bytes)}",
        f"  training checkpoint (+Adam)   {_gib(e.training_checkpoint_bytes)}    all-trainable:           "
        f"{_gib(e.full_training_checkpoint_bytes)}",
        "",
        "  DeepSpeed's estimator (estimate_zero3_model_states_mem_needs) counts every parameter as trainable "
        f"(largest layer {ds.largest_layer_params:,} params, buffer factor 1.5) and leaves out activations.",
    ]
    return "\n".join(lines)


def _size(n: int) -> str:
    return _gib(n).strip()


# Resident memory of one training process beyond its tensors (Python, torch, DeepSpeed), measured in the
# CPU runs (docs/benchmarks.md sections 3 and 13).
PROCESS_BYTES = int(0.7 * 2**30)


def host_verdict(e, hardware) -> dict | None:
    """Where the "GPUs" are this host's CPU (no accelerator), every process's share and the offloaded
    partitions live in the same memory: judge their sum against the host, total and available now."""
    if not hardware.device_is_host:
        return None
    import psutil

    per_process = e.gpu_total_bytes + PROCESS_BYTES
    need = e.host_bytes_per_node + e.setup.gpus_per_node * per_process
    available = psutil.virtual_memory().available
    return {"need_bytes": need, "offloaded_bytes": e.host_bytes_per_node, "per_process_bytes": per_process,
            "processes": e.setup.gpus_per_node, "host_bytes": hardware.host_bytes, "available_bytes": available,
            "fits_total": need <= hardware.host_bytes, "fits_available": need <= available}


def format_host_verdict(h: dict) -> str:
    figures = (f"{_size(h['need_bytes'])} = offloaded {_size(h['offloaded_bytes'])} + {h['processes']} process(es) x "
               f"{_size(h['per_process_bytes'])} (the per-GPU total + ~0.7 GiB of the process itself)")
    where = f"{_size(h['host_bytes'])} total, {_size(h['available_bytes'])} available now"
    if not h["fits_total"]:
        return f"  host (no GPU: the devices share it): does NOT fit: {figures}, on {where}."
    if not h["fits_available"]:
        return (f"  host (no GPU: the devices share it): does NOT fit in what is free now: {figures}, on {where}; "
                "fewer processes (each adds its own share) or a quieter machine.")
    return f"  host (no GPU: the devices share it): fits: {figures}, on {where}."


def format_verdict(e, v) -> str:
    """The answer to "does it fit?", and the checkpointing figure when activations dominate."""
    gpu = f"{v.gpu_bytes / 2**30:g} GiB"
    total, share = e.gpu_total_bytes, 100 * e.gpu_total_bytes / v.gpu_bytes
    if not v.fits:
        lines = [f"  verdict: does NOT fit on one {gpu} GPU: {_size(total)} per GPU ({share:.0f}%)."]
    elif v.tight:
        lines = [f"  verdict: fits on one {gpu} GPU, but tight: {_size(total)} per GPU ({share:.0f}%); the plan "
                 "leaves out communication buffers and fragmentation."]
    else:
        lines = [f"  verdict: fits on one {gpu} GPU: {_size(total)} per GPU ({share:.0f}%), "
                 f"{_size(v.gpu_bytes - total)} to spare."]
    if v.activations_dominate:
        after = ("fits" if v.checkpointed_fits else "still does not fit: lower --micro_batch_size or --seq_len")
        lines.append(f"  activations are {100 * e.activation_bytes / total:.0f}% of it: with "
                     f"--gradient_checkpointing they drop to {_size(e.checkpointed_activation_bytes)} and the total "
                     f"to {_size(v.checkpointed_total_bytes)} per GPU ({after} on {gpu}).")
    elif not v.fits:
        lines.append("  model states dominate: offload more (--offload optimizer, then param+optimizer) or use "
                     "more GPUs (--nodes).")
    return "\n".join(lines)


def format_ds_config(e, ds_config: str, notes: list[str]) -> str:
    s = e.setup
    zero3 = (f", persistence threshold {s.param_persistence_threshold:,}, prefetch bucket {s.prefetch_bucket_size:,}, "
             f"max live parameters {s.max_live_parameters:,}, max reuse distance {s.max_reuse_distance:,}"
             if s.zero_stage == 3 else "")
    lines = [f"  DeepSpeed config {ds_config}: ZeRO-{s.zero_stage}, offload {s.offload}, {'bf16' if s.bf16 else 'fp32'}, "
             f"micro batch {s.micro_batch_size}{zero3}"]
    lines += [f"    {note}" for note in notes]
    return "\n".join(lines)


# What the plan leaves out, and how it compared with measured runs (docs/benchmarks.md section 3).
NOT_PREDICTED = """\
  not predicted (keep 10-20% of the GPU free for them):
    GPU: the CUDA context and kernels' workspace, the caching allocator's fragmentation and reserve,
      communication buckets (reduce_bucket_size), pinned staging buffers;
    host: each process's own memory (Python, torch, DeepSpeed: about 0.7 GiB resident per process in
      the CPU runs, about 50 MiB of it DeepSpeed's engine beyond its tensors), page cache of the
      checkpoint files;
    activations assume every row is seq_len tokens (padding to the longest of a micro batch uses less)
      and attention that keeps no seq x seq matrix (sdpa / flash attention).
  checked against CPU runs of the trainer (tiny and hidden-768 models, 1 and 2 processes, with and
  without checkpointing, fp32): docs/benchmarks.md section 3 lists each figure against its plan."""


def format_traffic(e, traffic) -> str:
    """The step's bytes and times (loretta_ds.traffic) under the memory plan."""
    low, high = traffic.step_s_range
    first = (f" (the first step: {_size(traffic.first_step_cross_node_bytes_per_node)}, before hpZ's copy exists)"
             if traffic.first_step_cross_node_bytes_per_node else "")
    return "\n".join([
        "  traffic per optimizer step (after the first; docs/layouts.md)",
        f"    across each node's boundary {_gib(traffic.cross_node_bytes_per_node)}{first}",
        f"    NVLink, per GPU             {_gib(traffic.intra_node_bytes)}",
        f"    PCIe (offload), per GPU     {_gib(traffic.pcie_bytes)}",
        f"    trainable tensors            {_gib(traffic.trainable_bytes)}    (their gradients and updates: "
        "what must cross)",
        f"    time: communication {traffic.communication_s * 1e3:.1f} ms, compute {traffic.compute_s * 1e3:.1f} ms, "
        f"step {low * 1e3:.1f} to {high * 1e3:.1f} ms (full to no overlap)",
    ])


def _zero_hpz_is_auto(ds_config: str) -> bool:
    from ..distributed.ds_config import load_ds_config

    zero = load_ds_config(ds_config).get("zero_optimization") or {}
    return zero.get("stage") == 3 and zero.get("zero_hpz_partition_size") == "auto"


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..estimate import prepare_model
    from ..distributed.ds_config import AUTO_LAYOUT, LAYOUT_TEMPLATE
    from ..layout import choose_layout, detect_hardware, hpz_size
    from ..estimate import Setup, estimate_memory, setup_for_ds_config, verdict
    from ..models import load_model_config
    from ..traffic import step_traffic

    cfg = loretta_config_from_args(args)
    shared = train_settings_from_args(args, (*RUN_SETTINGS, "model"))  # train's checks (gpu_memory > 0 ...)
    model_name, ds_config = shared.pop("model"), shared.pop("ds_config")
    Setup(nodes=args.nodes, gpus_per_node=args.gpus_per_node, seq_len=shared["seq_len"])  # checked before the model
    # The memory train would plan with: --gpu_memory, else this machine's device (as train's --ds_config auto).
    hardware = detect_hardware(args.nodes, args.gpus_per_node, shared["gpu_memory"], shared["host_memory"])
    config = load_model_config(model_name)
    bandwidths = bandwidths_from_args(args)
    prepared = prepare_model(config, cfg)  # one meta-device model for every plan below
    choice = None
    settings = dict(nodes=args.nodes, gpus_per_node=args.gpus_per_node, seq_len=shared["seq_len"],
                    gradient_checkpointing=shared["gradient_checkpointing"],
                    micro_batch_size=shared["micro_batch_size"], bf16=shared["bf16"], offload=args.offload,
                    param_persistence_threshold=args.param_persistence_threshold,
                    load_in_4bit=shared["load_in_4bit"], double_quant=shared["bnb_4bit_use_double_quant"])
    if ds_config == AUTO_LAYOUT:
        if args.offload is not None:
            raise ValueError("--offload chooses a layout; --ds_config auto chooses it for you: drop one of the two")
        setup, notes = setup_for_ds_config(config, cfg, LAYOUT_TEMPLATE, prepared=prepared, **settings)
        choice = choose_layout(config, cfg, hardware, replace(setup, hpz_partition_size=1), bandwidths=bandwidths,
                               prepared=prepared)
        if choice.chosen is None:
            print("\n".join(choice.lines()), file=__import__("sys").stderr)
            raise ValueError(choice.reason)
        estimate = replace(choice.chosen.estimate, model=model_name)
    else:
        setup, notes = setup_for_ds_config(config, cfg, ds_config, prepared=prepared, **settings)
        if _zero_hpz_is_auto(ds_config):
            hpz, note = hpz_size(config, cfg, setup, hardware, bandwidths=bandwidths, prepared=prepared)
            setup = replace(setup, hpz_partition_size=hpz)
            notes.append(note)
        estimate = estimate_memory(config, cfg, setup, model_name=model_name, prepared=prepared)
    traffic = step_traffic(estimate, config, 1, bandwidths)
    judged = verdict(estimate, hardware.device_bytes)
    host = host_verdict(estimate, hardware)
    if args.json:
        print(json.dumps({**estimate.to_dict(), "verdict": judged.to_dict(), "host_verdict": host,
                          "ds_config": ds_config,
                          "ds_config_notes": notes, "traffic": traffic.to_dict(),
                          "layout": choice.to_dict() if choice is not None else None,
                          "not_predicted": NOT_PREDICTED}, indent=2))
    else:
        lines = format_estimate(estimate).split("\n")
        named = f"auto ({choice.chosen.ds_config_name})" if choice is not None else ds_config
        lines[2:2] = format_ds_config(estimate, named, notes).split("\n")  # under the header
        if choice is not None:
            lines[0:0] = choice.lines() + [""]
        measured = ("" if shared["gpu_memory"] is not None else
                    f"\n  (one GPU's memory: {hardware.device_source}; --gpu_memory GIB judges another GPU)")
        print("\n".join(lines) + "\n\n" + format_traffic(estimate, traffic) + "\n\n" + format_verdict(estimate, judged)
              + measured + ("\n" + format_host_verdict(host) if host else "") + "\n\n" + NOT_PREDICTED)
    return 0
