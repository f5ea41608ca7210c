"""What measuring the update's rounding costs the merged export: write_merged with and without it.

    python -m benchmarks.merge_rounding_cost [--repeats 4]

A bf16 LLaMA of 59M parameters (hidden 1024, 4 layers, the shape of tests/test_export_streaming.py)
saved in 30 MB shards, an adapter on every linear layer (the most merging per byte), one thread.
The two variants alternate, each repeat writing into a fresh directory; the shards stay in the
page cache, so the figure is the arithmetic alone (a real export also waits on the disk).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from loretta_ds.adapters.io import read_adapter_tensors
from loretta_ds.export.base_weights import open_base_checkpoint
from loretta_ds.export.merged import plan_merged, write_merged
from loretta_ds.export.rounding import UpdateRounding
from loretta_ds.export.sources import resolve_source
from loretta_ds.export.updates import norm_tensors, rep_updates

SHARD_BYTES = 30_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_export import make_run
    from tiny_models import tiny_llama

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="merge_rounding_cost-"))
    try:
        base = tiny_llama(hidden=1024, intermediate=2752, layers=4, heads=16, vocab=4096).to(torch.bfloat16)
        base.save_pretrained(root / "base", max_shard_size=SHARD_BYTES)
        make_run(root / "run", root / "base", base, scale=0.15)
        source = resolve_source(root / "run", None, None)
        tensors = read_adapter_tensors(source.adapter_dir)
        updates = rep_updates(source.config, source.meta, tensors)
        checkpoint = open_base_checkpoint(root / "base")
        plan = plan_merged(checkpoint, updates, norm_tensors(tensors), None, SHARD_BYTES)
        seconds = {"merge": [], "merge + rounding": []}
        for repeat in range(args.repeats):
            for label in seconds:
                out = root / f"out-{repeat}-{len(label)}"
                out.mkdir()
                rounding = UpdateRounding() if "rounding" in label else None
                start = time.perf_counter()
                write_merged(plan, checkpoint, out, log=lambda message: None, rounding=rounding)
                seconds[label].append(time.perf_counter() - start)
                shutil.rmtree(out)
        for label, values in seconds.items():
            print(f"{label}: {', '.join(f'{v:.2f}' for v in values)} s")
        ratio = statistics.median(seconds["merge + rounding"]) / statistics.median(seconds["merge"])
        print(f"median ratio (merge + rounding) / merge: {ratio:.2f}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
