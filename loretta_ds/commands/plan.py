"""`loretta-ds plan`: what a training run would do, checked and resolved, without loading a weight.

Takes every flag of `train` (and --config), plus the world size the run will have. Prints the
resolved plan: world size and batch split, steps and schedule, the DeepSpeed config after its
"auto" values are filled, the adapter's targets and trainable counts, the data, and where the run
would start (a new run, the checkpoint it would resume, or "already finished"). Every check the
trainer makes before loading the model runs here too, so an error is the trainer's own, with its
exit code 2. Nothing is written.

``--check batch`` resolves only the batch split (the DeepSpeed config's numbers, the batch flags and
the world size: no model, no data), which the SLURM launcher runs before it starts any process, on
any machine, so a job whose node count does not fit its batch is refused with the trainer's rule.
"""
from __future__ import annotations

import argparse
import json
import os

from ..quantization import QuantSpec
from ..run_config import add_train_arguments
from .estimate import BANDWIDTH_FLAGS, add_bandwidth_arguments, bandwidths_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.add_argument("--world_size", type=int, default=None,
                        help="processes of the run (default: --nodes x --gpus_per_node, else $WORLD_SIZE, else 1)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes of the run (default: 1)")
    parser.add_argument("--gpus_per_node", type=int, default=None,
                        help="processes per node (default: $LOCAL_WORLD_SIZE, else all on one node): the DeepSpeed "
                             "layout and hpZ depend on it")
    parser.add_argument("--check", choices=("all", "batch", "layout"), default="all",
                        help="all: every check of train (default); batch: only the batch split of the "
                             "DeepSpeed config over --world_size processes (no model or data needed; exit 3 when "
                             "the batch does not divide over them, 2 for any other error); layout: "
                             "only the DeepSpeed layout and its memory and traffic, from the model's shapes "
                             "(presets such as llama2-70b work; no data, tokenizer or weights). A shape-only "
                             "--model (a preset or a config.json) plans the layout only")
    add_bandwidth_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.add_argument("--table", action="store_true",
                        help="with --ds_config auto and a layout-only plan: each layout's memory and traffic as a "
                             "Markdown table (docs/layouts.md)")


def plan_summary(plan) -> dict:
    """The plan as JSON-ready facts (what `plan` prints)."""
    import math

    resume = plan.resume
    if resume.finished:
        start = "finished: this exact run already finished in the output directory (nothing to do)"
    elif resume.start_over is not None:
        start = "start over (--overwrite_output_dir): the earlier run's files are removed first"
    elif resume.checkpoint is not None:
        start = f"resume from {resume.checkpoint.path} (step {resume.step})"
    else:
        start = "a new run from step 0"
    trainable = sum(math.prod(shape) for shape in plan.trainable_shapes.values())
    return {
        "model": plan.model_path, "method": plan.cfg.method, "world_size": plan.world_size,
        "micro_batch_size": plan.micro_batch_size, "grad_accum": plan.grad_accum,
        "global_batch": plan.global_batch, "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
        "lr": plan.lr, "grad_clip": plan.grad_clip, "bf16": plan.bf16, "zero_stage": plan.zero_stage,
        "attn": plan.attn, "targets": plan.targets, "trainable_tensors": len(plan.trainable_shapes),
        "trainable_params": trainable, "train_examples": len(plan.data.train),
        "eval_examples": len(plan.data.eval) if plan.data.eval is not None else 0,
        "output_dir": plan.cfg.output_dir, "start": start, "notes": plan.notes, "warnings": plan.warnings,
        "ds_config": plan.ds_config, "layout": plan.layout,
        "quantization": plan.quantization.to_dict() if plan.quantization else None,
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"model {summary['model']}: {summary['method']} on {','.join(summary['targets'])}, "
        f"{summary['trainable_params']:,} trainable parameters in {summary['trainable_tensors']} tensors",
        f"  world size {summary['world_size']}: global batch {summary['global_batch']} = micro batch "
        f"{summary['micro_batch_size']} x grad accum {summary['grad_accum']} x {summary['world_size']} process(es)",
        f"  {summary['total_steps']} steps, {summary['warmup_steps']} of warmup, lr {summary['lr']:g}, "
        f"grad clip {summary['grad_clip']:g}, {'bf16' if summary['bf16'] else 'fp32'}, ZeRO stage "
        f"{summary['zero_stage']}, attention {summary['attn']}",
        *([f"  base: {QuantSpec.from_dict(summary['quantization']).describe()}"] if summary.get("quantization") else []),
        f"  data: {summary['train_examples']} train / {summary['eval_examples']} eval examples",
        f"  output {summary['output_dir']}: {summary['start']}",
    ]
    lines += [f"  ds_config: {line}" for note in summary["notes"] for line in note.split("\n")]
    lines += [f"  warning: {warning}" for warning in summary["warnings"]]
    lines.append("  DeepSpeed config as it will run:")
    lines += ["    " + line for line in json.dumps(summary["ds_config"], indent=2).splitlines()]
    return "\n".join(lines)


def batch_split(cfg, world_size: int) -> str:
    """The run's batch split over ``world_size`` processes, by the trainer's own rule; ValueError
    naming the fix when the DeepSpeed config's numbers do not fit that many processes."""
    from ..distributed.ds_config import RunFacts, batch_ds_config, resolve_batch
    from ..run_config import DEFAULT_GLOBAL_BATCH

    facts = RunFacts(world_size=world_size, lr=None, warmup_steps=0, total_steps=0, grad_clip=None, bf16=None,
                     hidden_size=1, max_trainable_numel=1, total_trainable_numel=1,
                     micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                     default_global_batch=DEFAULT_GLOBAL_BATCH)
    micro, accum, global_batch = resolve_batch(batch_ds_config(cfg.ds_config), facts)
    return (f"global batch {global_batch} = micro batch {micro} x grad accum {accum} x {world_size} "
            "process(es)")


# --check batch's exit status when the batch does not divide over the processes (other errors exit 2).
EXIT_BATCH_SPLIT = 3
PLAN_ONLY = ("world_size", "json", "table", "check", "nodes", "gpus_per_node", *BANDWIDTH_FLAGS)


def world_of(args: argparse.Namespace) -> tuple[int, int | None]:
    """(world size, processes per node or None for the launcher's) from the flags and $WORLD_SIZE."""
    for name in ("world_size", "nodes", "gpus_per_node"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    per_node = args.gpus_per_node
    from_layout = (args.nodes or 1) * per_node if per_node is not None else None
    if args.world_size is not None:
        world_size = args.world_size
        if from_layout is not None and args.nodes is not None and from_layout != world_size:
            raise ValueError(f"--world_size {world_size} is not --nodes {args.nodes} x --gpus_per_node {per_node}; "
                             "give one or the other")
    elif from_layout is not None:
        world_size = from_layout
    elif args.nodes is not None:
        raise ValueError("--nodes needs --gpus_per_node (processes per node)")
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1:
        raise ValueError(f"--world_size must be at least 1, got {world_size}")
    return world_size, per_node


def layout_summary(cfg, world_size: int, per_node: int | None, bandwidths, shape_only: bool) -> dict:
    from ..train_plan import plan_layout_only

    fitted, ds_config, notes = plan_layout_only(cfg, world_size, per_node, bandwidths)
    return {"model": cfg.model, "method": cfg.method, "world_size": world_size,
            "shape_only": shape_only, "notes": notes, "layout": fitted.choice.to_dict() if fitted.choice else None,
            "ds_config": ds_config}


def format_layout_summary(summary: dict) -> str:
    ds = summary["ds_config"]
    zero = ds["zero_optimization"]
    lines = [f"model {summary['model']}: {summary['method']}, world size {summary['world_size']}: DeepSpeed layout only"
             + (" (a shape-only --model: no data, tokenizer or run directory checked)"
                if summary["shape_only"] else ""),
             f"  ZeRO stage {zero['stage']}, {'bf16' if ds['bf16']['enabled'] else 'fp32'}; "
             f"global batch {ds['train_batch_size']} = micro batch {ds['train_micro_batch_size_per_gpu']} x grad accum "
             f"{ds['gradient_accumulation_steps']} x {summary['world_size']} process(es)"]
    lines += [f"  {line}" for note in summary["notes"] for line in note.split("\n")]
    lines.append("  DeepSpeed config as it will run:")
    lines += ["    " + line for line in json.dumps(ds, indent=2).splitlines()]
    return "\n".join(lines)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB" if n >= 1e5 else f"{n / 1e3:.3g} kB" if n else "0"


def format_layout_table(layout: dict) -> str:
    """Each layout of an auto choice: memory per device, host memory, bytes per step, times."""
    hw = layout["hardware"]
    lines = ["| layout | ZeRO | fits | per device (of {:.0f} GiB) | host per node | across each node's boundary "
             "| NVLink per GPU | PCIe per GPU | communication | step |".format(hw["device_bytes"] / 2**30),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in layout["candidates"]:
        t = c["traffic"]
        hpz = c["zero_hpz_partition_size"]
        zero = f"{c['zero_stage']}" + (f", hpZ {hpz}" if hpz > 1 else "")
        zero += ", offload" if c["offload"] != "none" else ""
        first = (f" ({_gb(t['first_step_cross_node_bytes_per_node'])} first step)"
                 if t["first_step_cross_node_bytes_per_node"] else "")
        fits = "**chosen**" if c["name"] == layout["chosen"] else ("yes" if c["fits"] else "no")
        lines.append(f"| {c['name']} | {zero} | {fits} | {c['device_need_bytes'] / 2**30:.1f} GiB | "
                     f"{c['host_need_bytes_per_node'] / 2**30:.0f} GiB | "
                     f"{_gb(t['cross_node_bytes_per_node'])}{first} | "
                     f"{_gb(t['intra_node_bytes'])} | {_gb(t['pcie_bytes'])} | {t['communication_s'] * 1e3:.0f} ms | "
                     f"{t['step_s_min']:.2f}-{t['step_s_max']:.2f} s |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..run_config import config_from_args

    given = {k: v for k, v in vars(args).items() if k not in PLAN_ONLY}
    world_size, per_node = world_of(args)
    cfg = config_from_args(given)
    if args.check == "batch":
        from ..cli import report_user_error
        from ..distributed.ds_config import BatchSplitError

        try:
            print(batch_split(cfg, world_size))
        except BatchSplitError as err:  # told apart from other errors: the launcher's advice depends on it
            if args.debug:
                raise
            report_user_error(err)
            return EXIT_BATCH_SPLIT
        return 0
    from ..models import resolve_model

    shape_only = resolve_model(cfg.model, weights=False)[0] is None  # a preset or a bare config.json
    if args.check == "layout" or shape_only:
        summary = layout_summary(cfg, world_size, per_node, bandwidths_from_args(args), shape_only)
        if args.table:
            if summary["layout"] is None:
                raise ValueError("--table shows the layouts of --ds_config auto; pass --ds_config auto")
            print(format_layout_table(summary["layout"]))
        else:
            print(json.dumps(summary, indent=2, default=str) if args.json else format_layout_summary(summary))
        return 0
    from ..train_plan import build_plan, choose_resume  # torch, transformers: only for the full plan

    quiet = args.json
    plan = build_plan(cfg, world_size, per_node)
    plan = dataclasses.replace(plan, resume=choose_resume(plan, log=(lambda _: None) if quiet else print))
    summary = plan_summary(plan)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0
