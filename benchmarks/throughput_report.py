"""The report of benchmarks/throughput.sh: per-run medians of real tokens/s and step time over the
measured steps, the ratios between stacks within each repeat (their median and spread), and the
packing efficiency a packed run logged.

A run is a directory holding metrics.jsonl (loretta_ds's, or benchmarks/hf_trainer_lora.py's records of
the same shape) named MODE-REPEAT, with its log beside it as MODE-REPEAT.log.

    python benchmarks/throughput_report.py --warmup 2 [--out FILE] RUN_DIR...
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

# (numerator, denominator, what the ratio says)
RATIOS = (
    ("rep-packed", "rep-padded", "packing (LoRETTA_rep)"),
    ("rep-packed", "hf-lora", "loretta_ds rep packed vs HF Trainer + PEFT LoRA"),
    ("rep-padded", "hf-lora", "loretta_ds rep padded vs HF Trainer + PEFT LoRA (both padded)"),
    ("rep-packed", "lora-packed", "LoRETTA_rep vs LoRA, both in loretta_ds, packed"),
)


def measured_steps(run: Path, warmup: int) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("kind") == "train" and r["step"] > warmup]
    if not steps:
        raise ValueError(f"{run}/metrics.jsonl has no train step after the {warmup} warm-up steps")
    return steps


def run_medians(run: Path, warmup: int) -> tuple[float, float]:
    """(median real tokens/s, median step time s) over the measured steps."""
    steps = measured_steps(run, warmup)
    return (statistics.median(r["tokens_per_s"] for r in steps), statistics.median(r["step_time_s"] for r in steps))


def mode_and_repeat(run: Path) -> tuple[str, int]:
    mode, _, repeat = run.name.rpartition("-")
    return mode, int(repeat)


def ratio_rows(medians: dict[tuple[str, int], tuple[float, float]]) -> list[str]:
    """One line per ratio: the median over repeats of numerator/denominator tokens/s, and the spread."""
    lines = []
    repeats = sorted({repeat for _, repeat in medians})
    for top, bottom, what in RATIOS:
        values = [medians[(top, r)][0] / medians[(bottom, r)][0] for r in repeats
                  if (top, r) in medians and (bottom, r) in medians]
        if values:
            lines.append(f"| {what} | {top} / {bottom} | {statistics.median(values):.2f}x | "
                         f"{min(values):.2f}-{max(values):.2f}x ({len(values)} repeats) |")
    return lines


def packing_line(runs: list[Path]) -> str | None:
    for run in runs:
        log = Path(f"{run}.log")
        found = re.search(r"packing: .*", log.read_text()) if log.is_file() else None
        if found:
            return found.group(0)
    return None


def report(runs: list[Path], warmup: int) -> str:
    medians = {mode_and_repeat(run): run_medians(run, warmup) for run in runs}
    modes = list(dict.fromkeys(mode for mode, _ in medians))
    lines = ["| run | real tokens/s (median per run) | step time s (median per run) |", "|---|---|---|"]
    for mode in modes:
        mine = [medians[key] for key in sorted(medians) if key[0] == mode]
        lines.append(f"| {mode} | {', '.join(f'{t:,.0f}' for t, _ in mine)} | "
                     f"{', '.join(f'{s:.3f}' for _, s in mine)} |")
    lines += ["", "| ratio of real tokens/s | runs | median | spread |", "|---|---|---|---|", *ratio_rows(medians)]
    packing = packing_line([run for run in runs if "packed" in run.name])
    if packing:
        lines += ["", f"packed run log: {packing}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, required=True, help="leading steps left out of the medians")
    parser.add_argument("--out", default=None, help="also write the report here")
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    text = report(args.runs, args.warmup)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
