"""`loretta-ds export`: a trained run -> merged HF checkpoint, PEFT LoRA adapter, or LoRETTA adapter."""
from __future__ import annotations

import argparse

FORMAT_HELP = ("merged: a plain Hugging Face checkpoint with the update added to the weights (rep); "
               "peft-lora: a standard PEFT LoRA adapter (rep); adapter: the LoRETTA adapter and run "
               "config (rep, adp)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="training OUTPUT_DIR (run_config.json + adapter/); omit when using --adapter")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write the export (created; must be empty)")
    parser.add_argument("--format", default="merged", choices=["merged", "peft-lora", "adapter"], help=FORMAT_HELP)
    parser.add_argument("--adapter", default=None, metavar="DIR", help="adapter directory (instead of RUN_DIR)")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help="base model directory or cached hub id (default: the run's 'model')")
    parser.add_argument("--dtype", default=None, metavar="DTYPE",
                        help="output dtype: auto (the base's, default), float32, bfloat16, float16")
    parser.add_argument("--max_shard_size", default=None, metavar="SIZE",
                        help="merged: largest output shard, e.g. 5GB (default), 10GB, 2GiB")
    parser.add_argument("--lora_norms", default="keep", choices=["keep", "drop"],
                        help="peft-lora: keep trained norms as modules_to_save (exact with PEFT) or drop "
                             "them (vLLM / TGI accept only lora_A / lora_B)")
    parser.add_argument("--verify", action="store_true",
                        help="afterwards, compare logits of base + adapter and of the export "
                             "(loads both models fully in float32: small models only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty OUT_DIR (swapped only once the new export is complete)")


def run(args: argparse.Namespace) -> int:
    from ..export import export

    if args.format == "merged":
        _check_base_weights(args)

    result = export(args.run_dir, args.out_dir, format=args.format, adapter=args.adapter, base=args.base,
                    dtype=args.dtype, max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                    verify=args.verify, lora_norms=args.lora_norms,
                    log=lambda message: print(message, flush=True))
    if result.verify is not None and not result.verify.ok:
        print(f"error: the export in {result.out_dir} does not reproduce the adapted model within "
              "tolerance (see above); do not use it, and report the numbers", flush=True)
        return 1
    return 0


def _check_base_weights(args: argparse.Namespace) -> None:
    """A merged export copies every base tensor: refuse a base whose weights miss one of its config's
    (or hold one it lacks) before writing, as train and generate do."""
    from pathlib import Path

    from ..export.sources import resolve_source
    from ..models import check_weights_match, resolve_model

    source = resolve_source(run_dir=Path(args.run_dir) if args.run_dir else None,
                            adapter=Path(args.adapter) if args.adapter else None, base=args.base)
    path, config = resolve_model(str(source.base_dir()), weights=True)
    check_weights_match(path, config)
