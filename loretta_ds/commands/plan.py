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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.add_argument("--world_size", type=int, default=None,
                        help="processes of the run (nodes x GPUs per node; default: $WORLD_SIZE, else 1)")
    parser.add_argument("--check", choices=("all", "batch"), default="all",
                        help="all: every check of train (default); batch: only the batch split of the "
                             "DeepSpeed config over --world_size processes (no model or data needed)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")


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
        "ds_config": plan.ds_config,
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
    lines += [f"  ds_config: {note}" for note in summary["notes"]]
    lines += [f"  warning: {warning}" for warning in summary["warnings"]]
    lines.append("  DeepSpeed config as it will run:")
    lines += ["    " + line for line in json.dumps(summary["ds_config"], indent=2).splitlines()]
    return "\n".join(lines)


def batch_split(cfg, world_size: int) -> str:
    """The run's batch split over ``world_size`` processes, by the trainer's own rule; ValueError
    naming the fix when the DeepSpeed config's numbers do not fit that many processes."""
    from ..distributed.ds_config import RunFacts, load_ds_config, resolve_batch
    from ..run_config import DEFAULT_GLOBAL_BATCH

    facts = RunFacts(world_size=world_size, lr=None, warmup_steps=0, total_steps=0, grad_clip=None, bf16=None,
                     hidden_size=1, max_trainable_numel=1, total_trainable_numel=1,
                     micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                     default_global_batch=DEFAULT_GLOBAL_BATCH)
    micro, accum, global_batch = resolve_batch(load_ds_config(cfg.ds_config), facts)
    return (f"global batch {global_batch} = micro batch {micro} x grad accum {accum} x {world_size} "
            "process(es)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..run_config import config_from_args

    given = {k: v for k, v in vars(args).items() if k not in ("world_size", "json", "check")}
    world_size = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1:
        raise ValueError(f"--world_size must be at least 1, got {world_size}")
    cfg = config_from_args(given)
    if args.check == "batch":
        print(batch_split(cfg, world_size))
        return 0
    from ..train_plan import build_plan, choose_resume  # torch, transformers: only for the full plan

    quiet = args.json
    plan = build_plan(cfg, world_size)
    plan = dataclasses.replace(plan, resume=choose_resume(plan, log=(lambda _: None) if quiet else print))
    summary = plan_summary(plan)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0
