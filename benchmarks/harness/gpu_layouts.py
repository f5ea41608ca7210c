"""`python -m benchmarks.harness.gpu_layouts`: the layouts of `--ds_config auto` on one GPU node,
through the real trainer (the deepspeed launcher, one process per GPU), on a LLaMA-2-7B-shaped
model with random weights; benchmarks/gpu_layouts.sh runs it.

Layouts (DS_CONFIG values, as in benchmarks/harness/layouts.py): auto (what the planner picks
here), zero2 (the frozen base replicated on every GPU), zero3 (partitioned over the node's GPUs:
on one node this is the planner's node layout; hpZ only changes anything across nodes) and
zero3_offload (the baseline). Rounds alternate the layouts; per layout: tokens/s (median of the
steps after the warmup, median over the rounds), the step time, the CUDA allocator's peak, and
the adapter's largest difference from the baseline's (bf16 runs: expect ~1e-3, not fp32 noise).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from .layouts import REPO, alternate, ds_config_for, table

LAYOUTS = ("auto", "zero2", "zero3", "zero3_offload")


def make_model(out: Path, hidden: int, intermediate: int, heads: int, layers: int, vocab: int) -> Path:
    """A random LLaMA of the given shape in bf16, written once, with the built-in model's tokenizer
    (its ids are a subset of any vocabulary >= 1024)."""
    if (out / "config.json").is_file():
        return out
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from loretta_ds.tiny_llama import ensure_tiny_llama

    tokenizer_dir = ensure_tiny_llama()
    config = AutoConfig.from_pretrained(tokenizer_dir)
    config.update(dict(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                       num_key_value_heads=heads, head_dim=hidden // heads, num_hidden_layers=layers,
                       vocab_size=vocab, dtype="bfloat16", tie_word_embeddings=False))
    torch.manual_seed(0)
    # Built on the GPU in bf16: a 7B model is 13.5 GB there, 27 GB and minutes in fp32 on the CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="5GB")
    del model
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness.gpu_layouts", description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="model, run directories and logs")
    p.add_argument("--gpus", type=int, required=True, help="processes (one per GPU) on this node")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS,
                   help="the last one is the baseline")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--micro_batch", type=int, default=1)
    p.add_argument("--gradient_checkpointing", default="true")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="", help="also write the table here (and the records beside it as JSON)")
    args = p.parse_args(argv)

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / f"llama-h{args.hidden}-l{args.layers}", args.hidden, args.intermediate, args.heads,
                       args.layers, args.vocab)

    def launch(name: str, layout: str) -> tuple[Path, float]:
        import time

        out = work / name
        cmd = ["deepspeed", "--num_gpus", str(args.gpus), "--master_port", str(free_port()),
               str(REPO / "launch" / "train.py"), "--model", str(model), "--ds_config", ds_config_for(layout, work),
               "--dataset", "bundled:instruct", "--packing", "--seq_len", str(args.seq_len),
               "--micro_batch_size", str(args.micro_batch), "--grad_accum", "1", "--bf16", "true",
               "--gradient_checkpointing", args.gradient_checkpointing, "--max_steps", str(args.steps),
               "--eval_every", "0", "--eval_batches", "1", "--save_every", "0", "--export", "false",
               "--seed", "0", "--output_dir", str(out), "--overwrite_output_dir"]
        started = time.monotonic()
        with open(work / f"{name}.log", "w") as log:
            status = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}).returncode
        if status != 0:
            tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} failed with exit {status}:\n{tail}")
        return out, time.monotonic() - started

    shape = ("LLaMA-2-7B shape" if (args.hidden, args.intermediate, args.heads) == (4096, 11008, 32)
             else f"LLaMA hidden {args.hidden}")
    about = {"model": f"{shape}, {args.layers} layers", "nodes": 1, "processes": args.gpus,
             "steps": args.steps, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
             "gradient_checkpointing": args.gradient_checkpointing}
    records = alternate(work, f"gpu-{args.gpus}", args.layouts, args.repeats, args.warmup, launch, about)
    text = table(records)
    memory = "\n".join(f"- {r['layout']}: peak CUDA allocated {max((x['cuda_max_allocated_mb'] or 0) for x in r['runs']):,.0f} MiB, "
                       f"step {1e3 * min(x['step_time_s'] for x in r['runs']):,.0f} ms (best round)" for r in records)
    text += "\n\n" + memory
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
