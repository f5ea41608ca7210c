"""A 4-bit frozen base on the real model (SmolLM2-135M-Instruct): peak host memory against the
full-precision base, and what the merged export of a 4-bit run is numerically.

    python benchmarks/qlora_check.py memory [--bf16 true] [--steps 2] [--repeats 1]
    python benchmarks/qlora_check.py export RUN_DIR        # a finished rep run with --load_in_4bit

``memory`` trains the same short rep run (one process, ZeRO-2, the bundled task) on the base and
on its 4-bit form, alternating, and reads each training process's peak resident memory (wait4's
ru_maxrss); it prints both beside the saving the weights alone account for (every quantized
weight at the run's bytes per element minus its 4-bit codes and scales).

``export`` writes the run's merged export and compares logits on fixed random tokens: the merged
export against the 4-bit base + adapter (the tolerance it is held to), and, to show what the export
is, the original full-precision base + adapter against the 4-bit base + adapter.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb(command: list[str], log: Path) -> float:
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed: {' '.join(command)}\n" + log.read_text()[-3000:])
    return usage.ru_maxrss / 1024


def weight_saving_mb(model_dir: str, element_bytes: int) -> float:
    """Bytes the 4-bit form saves on the weights alone: each quantized weight's element_bytes per
    element against its 4-bit codes and scales (loretta_ds.quantization's count)."""
    from loretta_ds.models import load_model_config, meta_model
    from loretta_ds.quantization import quantized_bytes, quantized_linear_names

    model = meta_model(load_model_config(model_dir))
    saving = 0
    for name in quantized_linear_names(model):
        numel = model.get_submodule(name).weight.numel()
        saving += numel * element_bytes - quantized_bytes(numel)
    return saving / 2**20


def memory(args) -> dict:
    from benchmarks.smollm2 import ensure_smollm2

    model = str(ensure_smollm2())
    work = Path(tempfile.mkdtemp(prefix="qlora_memory-"))
    peaks: dict[str, list[float]] = {"base": [], "4-bit": []}
    for repeat in range(args.repeats):
        for kind in (("base", "4-bit") if repeat % 2 == 0 else ("4-bit", "base")):
            out = work / f"{kind}-{repeat}"
            command = [sys.executable, str(ROOT / "launch" / "train.py"), "--model", model, "--ds_config", "zero2",
                       "--max_steps", str(args.steps), "--micro_batch_size", "16", "--seq_len", "64",
                       "--eval_every", "0", "--eval_batches", "1", "--save_every", "0", "--export", "false",
                       "--bf16", str(args.bf16).lower(), "--output_dir", str(out),
                       "--load_in_4bit", "true" if kind == "4-bit" else "false"]
            peaks[kind].append(peak_rss_mb(command, out.with_suffix(".log")))
            print(f"{kind} ({'bf16' if args.bf16 else 'fp32'}) repeat {repeat}: peak RSS {peaks[kind][-1]:.1f} MiB",
                  flush=True)
    saving = weight_saving_mb(model, 2 if args.bf16 else 4)
    measured = min(peaks["base"]) - max(peaks["4-bit"])
    return {"precision": "bf16" if args.bf16 else "fp32", "steps": args.steps, "peak_rss_mb": peaks,
            "weights_saving_mb": round(saving, 1), "measured_saving_mb": round(measured, 1),
            "target_met": measured >= saving}


def export_check(args) -> dict:
    import torch

    from loretta_ds.adapters import load_adapter
    from loretta_ds.export import export
    from loretta_ds.export.sources import resolve_source
    from loretta_ds.export.verify import sample_tokens
    from loretta_ds.quantization import QuantSpec, load_quantized

    source = resolve_source(run_dir=args.run_dir)
    spec = QuantSpec.from_dict(source.meta.get("base_quantization"))
    if spec is None:
        raise SystemExit(f"{args.run_dir} did not train on a 4-bit base (--load_in_4bit)")
    out = Path(tempfile.mkdtemp(prefix="qlora_export-")) / "merged"
    started = time.perf_counter()
    result = export(args.run_dir, out, format="merged", dtype="float32", verify=True, log=lambda m: None)
    seconds = time.perf_counter() - started
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        quantized = load_adapter(load_quantized(source.base_dir(), spec, float32=True), source.adapter_dir).eval()
        ids = sample_tokens(quantized.config.vocab_size)  # the tokens --verify compares on
        reference = quantized(input_ids=ids).logits.float()
        del quantized
        original = load_adapter(AutoModelForCausalLM.from_pretrained(source.base_dir(), dtype=torch.float32),
                                source.adapter_dir).eval()
        full = original(input_ids=ids).logits.float()
    agree = float((full.argmax(-1) == reference.argmax(-1)).float().mean())
    return {"run_dir": str(args.run_dir), "spec": spec.to_dict(), "export_seconds_with_verify": round(seconds, 1),
            "merged_vs_4bit_max_abs_diff": result.verify.max_abs_diff, "max_abs_logit": result.verify.max_abs_logit,
            "tolerance": result.verify.tolerance, "ok": result.verify.ok,
            "original_base_vs_4bit_max_abs_diff": float((full - reference).abs().max()),
            "original_base_vs_4bit_mean_abs_diff": float((full - reference).abs().mean()),
            "original_base_vs_4bit_top1_agreement": agree}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mem = commands.add_parser("memory")
    mem.add_argument("--bf16", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    mem.add_argument("--steps", type=int, default=2)
    mem.add_argument("--repeats", type=int, default=1)
    exp = commands.add_parser("export")
    exp.add_argument("run_dir")
    args = parser.parse_args(argv)
    result = memory(args) if args.command == "memory" else export_check(args)
    print(json.dumps(result, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
