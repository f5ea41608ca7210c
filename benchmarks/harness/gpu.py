"""`python -m benchmarks.harness.gpu`: the accelerator benchmark that benchmarks/gpu.sh runs.

A LLaMA-2-7B-shaped model (hidden 4096, intermediate 11008, 32 heads, vocab 32000, random
weights, fewer layers so it fits a few minutes), bf16: tokens/s and peak memory of the floor,
LoRETTA_rep, LoRETTA_adp and LoRA, for each available attention kernel. Beside the measured peak
step memory, rep and adp rows show the activation figure of loretta_ds.estimate for the same shape,
so the planner's formula is checked against the allocator on every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loretta_ds.settings import parse_bool
from .config import BenchConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--attn", default="sdpa", help="comma-separated: sdpa, flash_attention_2, eager")
    p.add_argument("--contenders", default="floor,rep,adp,lora")
    p.add_argument("--train_norms", type=parse_bool, default=True,
                   help="LoRETTA also trains the norm weights (the paper's set); false: like for like with LoRA")
    p.add_argument("--out", default="", help="also write the table to this file")
    p.add_argument("--json", default="", help="also write the full report as JSON here")
    return p.parse_args(argv)


def _estimated_activations(cfg: BenchConfig, method: str) -> int:
    """loretta_ds.estimate's activation bytes for this shape, batch and dtype on one device."""
    from transformers import LlamaConfig

    from loretta_ds.adapters import LorettaConfig, inject
    from loretta_ds.estimate import Setup, activation_terms
    from loretta_ds.models import meta_model

    config = LlamaConfig(hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.kv_heads or cfg.heads, vocab_size=cfg.vocab,
                         tie_word_embeddings=False)
    lcfg = LorettaConfig(method=method)
    model = inject(meta_model(config), lcfg)
    setup = Setup(bf16=cfg.dtype != "fp32", micro_batch_size=cfg.batch, seq_len=cfg.seq_len)
    return activation_terms(model, config, lcfg, setup)["total_bytes"]


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def format_table(report, estimates: dict[str, int]) -> str:
    cfg, m = report.config, report.machine
    lines = [
        f"{m.get('gpu') or m['cpu']}, torch {m['torch']}: LLaMA hidden {cfg['hidden']}, intermediate "
        f"{cfg['intermediate']}, {cfg['layers']} layers, vocab {cfg['vocab']}, {cfg['dtype']}, batch "
        f"{cfg['batch']} x seq {cfg['seq_len']}; median of {cfg['steps']} alternating steps",
        "",
        "| contender | attention | tokens/s | train step ms | step / LoRA | step / floor "
        "| peak step memory MiB | estimated activations MiB | trainable params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        ratio = lambda x: "-" if x is None else f"{x:.3f}x"
        lines.append(f"| {r['label']} | {r['attn']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} "
                     f"| {ratio(r['step_vs_lora'])} | {ratio(r['step_vs_floor'])} | {_mib(r['peak_step_bytes'])} "
                     f"| {_mib(estimates.get(r['name'].split('/')[0]))} | {r['trainable_params']:,} |")
    lines += ["", f"Peak step memory: {report.memory_method}."]
    lines += [f"Skipped {name}: {why}." for name, why in report.skipped.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from .report import to_json
    from .runner import run_bench

    args = parse_args(argv)
    cfg = BenchConfig(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                      heads=args.heads, vocab=args.vocab, batch=args.batch, seq_len=args.seq_len,
                      steps=args.steps, warmup=args.warmup, memory_repeats=2, device=args.device,
                      dtype=args.dtype, attn=[a for a in args.attn.split(",") if a],
                      contenders=[c for c in args.contenders.split(",") if c],
                      train_norms=args.train_norms)
    report = run_bench(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    report.command = "python -m benchmarks.harness.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    estimates = {method: _estimated_activations(cfg, method) for method in ("rep", "adp")
                 if method in cfg.contenders}
    table = format_table(report, estimates)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(to_json(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
