"""How much of a LoRETTA_rep update survives when W + dW is rounded to an output dtype.

    python -m benchmarks.merge_rounding RUN_DIR [--base BASE_DIR] [--merged MERGED_DIR] [--every N] [--scale S]

For every merged weight (every N-th with --every) it reads W from the base checkpoint and the
update dW from the adapter, forms the exact sum in float64 and reports, per output dtype:

  lost  = ||round(W + dW) - (W + dW)|| / ||dW||   (1: the update vanished; ~0: it is all there)
  kept  = <round(W + dW) - round(W), dW> / ||dW||^2   (the share of the update left in its direction)

With --merged it also checks that the tensors an export wrote are, bit for bit, the export's own
arithmetic on W and dW (float32 sum rounded once), and every other tensor the base's (or the
trained norm), so a defect in the writer (a wrong layer, a missing or doubled update, a stale
norm) shows up as mismatches rather than as rounding. --scale multiplies dW
(what a proportionally larger learning rate would have given after the same step) to see where
rounding noise turns into loss. One weight at a time.
"""
from __future__ import annotations

import argparse
import math

import torch

from loretta_ds.adapters.io import read_adapter_tensors
from loretta_ds.export.base_weights import open_base_checkpoint
from loretta_ds.export.sources import resolve_source
from loretta_ds.export.updates import norm_tensors, rep_updates

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def whole(checkpoint, name: str) -> torch.Tensor:
    info = checkpoint.tensors[name]
    with checkpoint.open_shard(info.file) as reader:
        return reader.read_rows(info, 0, info.rows).reshape(info.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--base", default=None)
    parser.add_argument("--merged", default=None, help="an export of RUN_DIR to check bit for bit")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    source = resolve_source(args.run_dir, None, args.base)
    tensors = read_adapter_tensors(source.adapter_dir)
    updates = rep_updates(source.config, source.meta, tensors)
    base = open_base_checkpoint(source.base_dir())
    if args.merged and args.scale != 1:
        parser.error("--merged checks the export of the update as trained: leave --scale at 1")
    merged = open_base_checkpoint(args.merged) if args.merged else None
    totals = {name: [0.0, 0.0, 0.0] for name in DTYPES}  # sum lost^2, sum kept*|dW|^2, sum |dW|^2
    mismatched = 0
    for number, update in enumerate(updates.values()):
        if number % args.every:
            continue
        weight = whole(base, update.weight_name)
        lora_a, lora_b = update.lora_factors()
        exact = weight.double() + args.scale * update.scaling * (lora_b.double() @ lora_a.double())
        delta = exact - weight.double()
        delta_sq = float((delta * delta).sum())
        row = [f"{update.weight_name}: |dW|/|W| {math.sqrt(delta_sq) / float(weight.double().norm()):.2e}"]
        for name, dtype in DTYPES.items():
            written = exact.to(dtype).double()
            lost = float((written - exact).norm()) / math.sqrt(delta_sq)
            kept = float(((written - weight.to(dtype).double()) * delta).sum()) / delta_sq
            totals[name][0] += lost * lost * delta_sq
            totals[name][1] += kept * delta_sq
            totals[name][2] += delta_sq
            row.append(f"{name} lost {lost:.3f} kept {kept:.3f}")
        if merged is not None:
            ours = weight.float().addmm_(lora_b, lora_a, alpha=update.scaling)
            written = whole(merged, update.weight_name)
            same = torch.equal(ours.to(written.dtype), written)
            mismatched += not same
            row.append("export bit-identical" if same else
                       f"EXPORT DIFFERS (max {float((ours - written.float()).abs().max()):.3g})")
        print("; ".join(row), flush=True)
    for name, (lost_sq, kept, delta_sq) in totals.items():
        print(f"all weights, {name}: lost {math.sqrt(lost_sq / delta_sq):.4f}, kept {kept / delta_sq:.4f}")
    if merged is not None:
        print(f"export check: {mismatched} weight(s) differ from W + dW rounded once")
        print(f"export check: {check_the_rest(base, merged, updates, norm_tensors(tensors))}")


def check_the_rest(base, merged, updates: dict, norms: dict) -> str:
    """Every tensor the merge did not add an update to: the trained norm, else the base tensor."""
    merged_weights = {update.weight_name for update in updates.values()}
    rest = [name for name in base.tensors if name not in merged_weights]
    differ = []
    for name in rest:
        expected = norms[name] if name in norms else whole(base, name)
        written = whole(merged, name)
        if not torch.equal(expected.to(written.dtype).reshape(written.shape), written):
            differ.append(name)
    missing = sorted(set(base.tensors) - set(merged.tensors))
    return (f"{len(rest) - len(differ)} of {len(rest)} other tensors as expected ({len(norms)} trained norms, "
            f"the rest the base's); differ: {differ[:5] or 'none'}; missing: {missing[:5] or 'none'}")


if __name__ == "__main__":
    main()
