"""`python -m benchmarks.bench [options]` (from the checkout's root): LoRETTA vs LoRA, a dense adapter,
the reference package and the frozen floor, every contender in one process, alternating.

The benchmarks are not part of the installed package: they import loretta_ds (and deepspeed,
peft, the reference ``loretta``) like any user code would, from a checkout."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from benchmarks.harness.config import ALL_CONTENDERS, BenchConfig
from loretta_ds.settings import parse_bool


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    shape = parser.add_argument_group("model (random weights, LLaMA architecture)")
    shape.add_argument("--hidden", type=int, default=d.hidden)
    shape.add_argument("--intermediate", type=int, default=d.intermediate)
    shape.add_argument("--layers", type=int, default=d.layers)
    shape.add_argument("--heads", type=int, default=d.heads)
    shape.add_argument("--kv_heads", type=int, default=None, help="default: = heads")
    shape.add_argument("--vocab", type=int, default=d.vocab)
    work = parser.add_argument_group("workload and measurement")
    work.add_argument("--batch", type=int, default=d.batch)
    work.add_argument("--seq_len", type=int, default=d.seq_len)
    work.add_argument("--steps", type=int, default=d.steps, help="timed steps per contender (median)")
    work.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps per contender first")
    work.add_argument("--memory_repeats", type=int, default=d.memory_repeats)
    work.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads")
    work.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N")
    work.add_argument("--clock", default=d.clock,
                      help="wall | cpu (process CPU time: robust to other processes on a shared CPU)")
    work.add_argument("--dtype", default=d.dtype, help="fp32 | bf16 | fp16")
    work.add_argument("--attn", type=_list, default=d.attn,
                      help="comma-separated attention implementations: sdpa, eager, flash_attention_2")
    work.add_argument("--contenders", type=_list, default=d.contenders,
                      help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}")
    work.add_argument("--seed", type=int, default=d.seed)
    work.add_argument("--train_norms", type=parse_bool, default=d.train_norms,
                      help="LoRETTA and the dense adapter also train norm weights (true/false; LoRA and "
                           "the reference never do)")
    out = parser.add_argument_group("output")
    out.add_argument("--out_dir", default="bench_results",
                     help="where bench.md, bench.json, bench.png go; '-' writes no files")
    out.add_argument("--stem", default="bench", help="file name stem of the outputs")
    out.add_argument("--no_chart", action="store_true", help="skip the PNG (no matplotlib needed)")
    out.add_argument("--quiet", action="store_true", help="print only the table")
    out.add_argument("--layer", action="store_true",
                     help="instead of whole models: one adapted hidden x hidden projection on batch x seq_len "
                          "tokens, forward + backward, --steps alternating repetitions (default 200)")
    out.add_argument("--llama2_checkpoints", action="store_true",
                     help="also measure the checkpoint files of rep, adp, LoRA and the dense adapter at the "
                          "LLaMA-2 7B/13B/70B shapes (meta-device models, ~1 minute)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                       heads=args.heads, kv_heads=args.kv_heads, vocab=args.vocab, batch=args.batch,
                       seq_len=args.seq_len, steps=args.steps, warmup=args.warmup,
                       memory_repeats=args.memory_repeats, threads=args.threads, device=args.device, clock=args.clock,
                       train_norms=args.train_norms,
                       dtype=args.dtype, attn=args.attn, contenders=args.contenders, seed=args.seed)


def _command_line(args: argparse.Namespace) -> str:
    """The command that made a result, for the report (``loretta-ds bench ...`` or ``python -m ...``)."""
    return "python -m benchmarks.bench " + shlex.join(args.argv)


def _run_layer(args: argparse.Namespace, cfg: BenchConfig) -> int:
    import time

    from benchmarks.harness.layer import layer_bench, layer_table

    repeats = args.steps if args.steps != BenchConfig().steps else 200
    rows = layer_bench(cfg.hidden, cfg.tokens, repeats, max(cfg.warmup, 1), cfg.threads,
                       clock=time.process_time if cfg.clock == "cpu" else time.perf_counter)
    table = layer_table(rows, cfg.hidden, cfg.tokens, repeats)
    print(table)
    table = f"Command: `{_command_line(args)}`\n\n" + table
    if args.out_dir != "-":
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.out_dir) / f"{args.stem}_layer.md").write_text(table)
    return 0


def run(args: argparse.Namespace) -> int:
    from benchmarks.harness.report import to_markdown, write_all
    from benchmarks.harness.runner import run_bench

    cfg = config_from_args(args)
    if args.layer:
        return _run_layer(args, cfg)
    report = run_bench(cfg, log=(lambda *_: None) if args.quiet else
                       (lambda msg: print(msg, file=sys.stderr, flush=True)))
    report.command = _command_line(args)
    if args.llama2_checkpoints:
        from benchmarks.harness.checkpoints import checkpoint_rows
        report.llama2_checkpoints = checkpoint_rows()
    print(to_markdown(report))
    if args.out_dir == "-":
        return 0
    paths = write_all(report, Path(args.out_dir), args.stem, chart=not args.no_chart)
    if not args.quiet:
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
