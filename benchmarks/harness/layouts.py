"""The DeepSpeed layouts side by side on the local SLURM cluster: bytes crossing the node boundary
per step, and tokens per second, of the same job under each layout.

    python -m benchmarks.harness.layouts bytes --work DIR --model tiny --layouts auto zero2 hpz zero3 zero3_offload
    python -m benchmarks.harness.layouts speed --work DIR --model tiny --nodes 2 --layouts auto hpz zero3_offload
    python -m benchmarks.harness.layouts table DIR...

Every job is slurm/tiny_cpu_2node.sh (2 nodes x 2 processes) or slurm/tiny_cpu.sh (1 node x 2)
with MODEL and DS_CONFIG set, so it runs as a user's job runs, launcher included. A layout is a
DS_CONFIG value:

    auto           the trainer's choice (--ds_config auto)
    zero2          ds_configs/zero2.json: the frozen base replicated on every process
    zero3          ds_configs/zero3.json with zero_hpz_partition_size 1: ZeRO-3 over all processes
    hpz            zero3.json with zero_hpz_partition_size = processes per node
    zero3_offload  ds_configs/zero3_offload.json as shipped: ZeRO-3, parameters and optimizer in
                   host memory, hpZ sized by the trainer ("auto": per node where its copy fits)
    offload_flat   zero3_offload.json with zero_hpz_partition_size 1: the offload layout without
                   hpZ, the SLURM scripts' default before auto (the baseline of the targets)
(the fixed-hpZ variants are written into DIR).

bytes: each layout's traffic per step from node2's veth (benchmarks/harness/node_traffic.py: a
SHORT- and a LONG-step job, their difference over the step difference). speed: REPEATS rounds,
each running every layout once in turn (a slow phase of the shared machine then lands on every
layout alike); tokens/s of a job is the median of its steps' tokens_per_s after WARMUP steps, a
layout's figure the median over its rounds; the adapters are compared with the last layout's
(the baseline). Results: one JSON file per job in DIR, and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from .node_traffic import REPO, JobTraffic, bytes_per_step, run_job, trainable_bytes

LAYOUTS = ("auto", "zero2", "zero3", "hpz", "zero3_offload", "offload_flat")
SCRIPTS = {1: "tiny_cpu.sh", 2: "tiny_cpu_2node.sh"}
PROCESSES_PER_NODE = 2  # both scripts' --ntasks-per-node
# The second, larger model of the bytes measurement: the built-in model's shape (so the same TT
# cores train) with 48x wider MLPs, so that only the frozen base grows (about 20x).
WIDE_INTERMEDIATE = 16384


def ds_config_for(layout: str, work: Path) -> str:
    if layout == "auto":
        return "auto"
    if layout in ("zero2", "zero3_offload"):
        return str(REPO / "ds_configs" / f"{layout}.json")
    # The shipped ZeRO-3 configs size hpZ themselves ("auto"); these layouts fix it.
    base, hpz = {"zero3": ("zero3", 1), "hpz": ("zero3", PROCESSES_PER_NODE),
                 "offload_flat": ("zero3_offload", 1)}.get(layout, (None, None))
    if base is None:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    config = json.loads((REPO / "ds_configs" / f"{base}.json").read_text())
    config["zero_optimization"]["zero_hpz_partition_size"] = hpz
    path = work / f"{layout}.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return str(path)


def model_path(name: str, work: Path) -> str:
    """tiny (the built-in model), wide (see WIDE_INTERMEDIATE), smollm2 (SmolLM2-135M), or a path."""
    if name == "tiny":
        from loretta_ds.tiny_llama import ensure_tiny_llama

        return str(ensure_tiny_llama())
    if name == "smollm2":
        from ..smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    if name == "wide":
        path = work / "wide-model"
        if not (path / "config.json").is_file():
            from transformers import AutoConfig

            from loretta_ds.tiny_llama import ensure_tiny_llama

            from .comm import make_model

            tiny = AutoConfig.from_pretrained(ensure_tiny_llama())
            make_model(str(path), hidden=tiny.hidden_size, layers=tiny.num_hidden_layers,
                       intermediate=WIDE_INTERMEDIATE, heads=tiny.num_attention_heads)
        return str(path)
    return name


def layout_used(output_dir: Path) -> str:
    """What the run's resolved DeepSpeed config says it ran (run_config.json's ds_config)."""
    run = json.loads((output_dir / "run_config.json").read_text())
    zero = (run.get("ds_config") or {}).get("zero_optimization", {})
    parts = [f"ZeRO-{zero.get('stage')}"]
    if zero.get("zero_hpz_partition_size", 1) > 1:
        parts.append(f"hpZ {zero['zero_hpz_partition_size']}")
    if "offload_param" in zero:
        parts.append("param offload")
    layout = run.get("layout") or {}  # the trainer's record of its layout choice
    if layout.get("requested") == "auto":
        parts.append(f"auto chose {layout.get('chosen')}")
    return ", ".join(parts)


def frozen_params(log: Path) -> int | None:
    import re

    m = re.search(r"frozen \d+ tensors / ([\d,]+) params", log.read_text(errors="replace"))
    return int(m.group(1).replace(",", "")) if m else None


def save(work: Path, name: str, record: dict) -> None:
    (work / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


def measure_bytes(work: Path, model: str, layouts: list[str], short: int, long: int) -> list[dict]:
    path = model_path(model, work)
    records = []
    for layout in layouts:
        jobs: list[JobTraffic] = []
        for steps in (short, long):
            name = f"bytes-{model}-{layout}-{steps}"
            print(f"== {name}", file=sys.stderr, flush=True)
            jobs.append(run_job(SCRIPTS[2], steps, work / name, work / f"{name}.log", MODEL=path,
                                DS_CONFIG=ds_config_for(layout, work)))
        per_step = bytes_per_step(*jobs)
        trainable = trainable_bytes(jobs[1].output_dir)
        frozen = frozen_params(jobs[1].log)
        record = {"kind": "bytes", "model": model, "layout": layout, "used": layout_used(jobs[1].output_dir),
                  "nodes": 2, "short_steps": short, "long_steps": long, "short_bytes": jobs[0].bytes,
                  "long_bytes": jobs[1].bytes, "bytes_per_step": per_step, "trainable_bytes": trainable,
                  "frozen_bytes": 4 * frozen if frozen else None, "x_trainable": per_step / trainable,
                  "limit": 16 * trainable + 64 * 1024}
        save(work, f"bytes-{model}-{layout}", record)
        print(json.dumps(record), file=sys.stderr, flush=True)
        records.append(record)
    return records


def measure_speed(work: Path, model: str, nodes: int, layouts: list[str], repeats: int, steps: int,
                  warmup: int, extra_args: str, master_port: int = 0) -> list[dict]:
    """Tokens/s of ``model`` under each layout on the SLURM cluster (``nodes`` x 2 processes)."""
    path = model_path(model, work)

    def launch(name: str, layout: str) -> tuple[Path, float]:
        job = run_job(SCRIPTS[nodes], steps, work / name, work / f"{name}.log", extra_args=extra_args,
                      MODEL=path, DS_CONFIG=ds_config_for(layout, work))
        return job.output_dir, job.seconds

    def launch_here(name: str, layout: str) -> tuple[Path, float]:
        """The deepspeed launcher on this machine (1 node x 2), as tiny_cpu.sh's job runs but
        outside SLURM, so it can run beside a cluster job that is being measured."""
        import os
        import subprocess
        import time

        out = work / name
        cmd = ["deepspeed", "--num_gpus", str(PROCESSES_PER_NODE), "--master_port", str(master_port),
               str(REPO / "launch" / "train.py"), "--model", path, "--ds_config", ds_config_for(layout, work),
               "--dataset", "bundled:sentiment", "--max_steps", str(steps), "--eval_every", "0",
               "--eval_batches", "1", "--save_every", "0", "--output_dir", str(out), *extra_args.split()]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        with open(work / f"{name}.log", "w") as log:
            status = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise RuntimeError(f"{name} failed ({status}):\n{(work / f'{name}.log').read_text()[-3000:]}")
        return out, time.monotonic() - started

    if master_port and nodes != 1:
        raise ValueError("--here runs 1 node x 2 processes only")
    label = f"{model}-{nodes}n"
    return alternate(work, label, layouts, repeats, warmup, launch_here if master_port else launch,
                     {"model": model, "nodes": nodes, "processes": nodes * PROCESSES_PER_NODE, "steps": steps,
                      "extra_args": extra_args})


def alternate(work: Path, label: str, layouts: list[str], repeats: int, warmup: int, launch,
              about: dict) -> list[dict]:
    """REPEATS rounds, each running every layout once in the given order (``launch(name, layout)``
    -> (output directory, seconds)); one record per layout, the last layout the baseline."""
    runs: dict[str, list[dict]] = {layout: [] for layout in layouts}
    for repeat in range(1, repeats + 1):
        for layout in layouts:
            name = f"speed-{label}-{layout}-{repeat}"
            print(f"== {name}", file=sys.stderr, flush=True)
            output_dir, seconds = launch(name, layout)
            runs[layout].append(run_record(output_dir, repeat, warmup, seconds))
            print(json.dumps(runs[layout][-1]), file=sys.stderr, flush=True)
    return summarize(work, label, layouts, runs, warmup, about)


def run_record(output_dir: Path, repeat: int, warmup: int, seconds: float | None) -> dict:
    """One job's figures: medians over its steps after ``warmup`` (from its metrics.jsonl)."""
    from loretta_ds.run.metrics import read_metrics

    steps = [r for r in read_metrics(output_dir / "metrics.jsonl") if r.get("kind") == "train" and r["step"] > warmup]
    memory = [r["cuda_max_allocated_mb"] for r in steps if "cuda_max_allocated_mb" in r]
    return {"repeat": repeat, "output_dir": str(output_dir), "measured_steps": [r["step"] for r in steps],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
            "step_time_s": statistics.median(r["step_time_s"] for r in steps),
            "cuda_max_allocated_mb": max(memory) if memory else None,
            "job_seconds": seconds, "used": layout_used(output_dir)}


def summarize(work: Path, label: str, layouts: list[str], runs: dict[str, list[dict]], warmup: int,
              about: dict) -> list[dict]:
    """One record per layout from its rounds' runs; the last layout is the baseline."""
    baseline = layouts[-1]
    records = []
    for layout in layouts:
        records.append({"kind": "speed", **about, "layout": layout, "used": runs[layout][0]["used"],
                        "warmup": warmup, "runs": runs[layout],
                        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs[layout]),
                        "baseline": baseline,
                        "adapter_max_abs_diff": adapter_difference(Path(runs[layout][0]["output_dir"]),
                                                                   Path(runs[baseline][0]["output_dir"]))})
    base = next(r for r in records if r["layout"] == baseline)["tokens_per_s"]
    for record in records:
        record["vs_baseline"] = record["tokens_per_s"] / base
        save(work, f"speed-{label}-{record['layout']}", record)
    return records


def adapter_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x = load_file(str(a / "adapter" / "adapter.safetensors"))
    y = load_file(str(b / "adapter" / "adapter.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def table(records: list[dict]) -> str:
    lines = []
    traffic = [r for r in records if r["kind"] == "bytes"]
    if traffic:
        lines += ["| model (frozen bytes) | layout | ran as | bytes across nodes / step | x trainable bytes "
                  "| target <= 16 x trainable + 64 KiB |",
                  "|---|---|---|---:|---:|---|"]
        for r in traffic:
            frozen = f"{r['frozen_bytes']:,}" if r.get("frozen_bytes") else "?"
            met = "met" if r["bytes_per_step"] <= r["limit"] else "not met"
            lines.append(f"| {r['model']} ({frozen}) | {r['layout']} | {r['used']} | {r['bytes_per_step']:,.0f} "
                         f"| {r['x_trainable']:.1f}x of {r['trainable_bytes']:,} | {met} ({r['limit']:,}) |")
    speed = [r for r in records if r["kind"] == "speed"]
    if speed:
        lines += ["" if lines else None, "| model | nodes x processes | layout | ran as | tokens/s (median of rounds) "
                  "| each round | vs baseline | adapter max abs diff vs baseline |",
                  "|---|---|---|---|---:|---|---:|---:|"]
        lines = [line for line in lines if line is not None]
        for r in speed:
            fmt = (lambda x: f"{x:,.0f}") if r["tokens_per_s"] >= 100 else (lambda x: f"{x:.2f}")
            rounds = ", ".join(fmt(run["tokens_per_s"]) for run in r["runs"])
            per_node = r["processes"] // r["nodes"]
            lines.append(f"| {r['model']} | {r['nodes']} x {per_node} | {r['layout']} | {r['used']} "
                         f"| {fmt(r['tokens_per_s'])} | {rounds} | {r['vs_baseline']:.2f}x ({r['baseline']}) "
                         f"| {r['adapter_max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness.layouts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("bytes", help="bytes across the node boundary per step, each layout (2 nodes x 2)")
    b.add_argument("--work", required=True)
    b.add_argument("--model", default="tiny", help="tiny | wide | smollm2 | a model directory")
    b.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    b.add_argument("--short", type=int, default=2)
    b.add_argument("--long", type=int, default=12)
    s = sub.add_parser("speed", help="tokens/s of the layouts, alternating rounds")
    s.add_argument("--work", required=True)
    s.add_argument("--model", default="tiny", help="tiny | wide | smollm2 | a model directory")
    s.add_argument("--nodes", type=int, choices=sorted(SCRIPTS), default=2)
    s.add_argument("--layouts", nargs="+", default=["auto", "hpz", "zero3_offload"], choices=LAYOUTS,
                   help="the last one is the baseline of the ratios and of the adapter comparison")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    s.add_argument("--extra_args", default="", help="more trainer flags for every job")
    s.add_argument("--here", type=int, default=0, metavar="MASTER_PORT",
                   help="1 node only: run with the deepspeed launcher on this machine (this rendezvous port) "
                        "instead of a SLURM job")
    c = sub.add_parser("collect", help="speed records from the finished jobs of a speed run that was stopped "
                                       "early (the complete rounds only)")
    c.add_argument("--work", required=True)
    c.add_argument("--label", required=True, help="e.g. smollm2-1n")
    c.add_argument("--layouts", nargs="+", required=True, choices=LAYOUTS)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--about", default="{}", help="JSON: model, nodes, processes, steps, extra_args")
    t = sub.add_parser("table", help="the markdown table of the JSON results in DIRs")
    t.add_argument("dirs", nargs="+")
    args = parser.parse_args(argv)
    if args.action == "table":
        records = [json.loads(p.read_text()) for d in args.dirs for p in sorted(Path(d).glob("*.json"))
                   if p.name.startswith(("bytes-", "speed-"))]
        print(table(records))
        return 0
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.action == "collect":
        runs: dict[str, list[dict]] = {layout: [] for layout in args.layouts}
        repeat = 1
        while all((work / f"speed-{args.label}-{layout}-{repeat}" / "adapter").is_dir() for layout in args.layouts):
            for layout in args.layouts:
                runs[layout].append(run_record(work / f"speed-{args.label}-{layout}-{repeat}", repeat, args.warmup, None))
            repeat += 1
        if repeat == 1:
            raise SystemExit(f"no complete round of {args.layouts} in {work}")
        print(table(summarize(work, args.label, args.layouts, runs, args.warmup, json.loads(args.about))))
        return 0
    if args.action == "bytes":
        records = measure_bytes(work, args.model, args.layouts, args.short, args.long)
    else:
        records = measure_speed(work, args.model, args.nodes, args.layouts, args.repeats, args.steps,
                                args.warmup, args.extra_args, args.here)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
