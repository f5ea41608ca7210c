"""Tables for benchmarks/smollm2_speed.sh: step times per config and method with per-repeat ratios
("table"), and where rank 0's time goes in a py-spy sample of its measured steps ("breakdown").

    python benchmarks/smollm2_profile.py table --out DIR RUN.json ...
    python benchmarks/smollm2_profile.py breakdown RUN.pyspy [--label NAME]

A breakdown sample is py-spy's raw (collapsed) stack of rank 0's main thread, taken with --idle, so
waiting (for the other rank, for the CPU) counts where it happens. Each sample goes to the first
category whose frame it contains, in the order of CATEGORIES.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

# (category, frame names that put a sample into it); the first match wins, so waiting inside a
# hook counts as waiting, a GEMM inside a hook's backward counts as the GEMM, and so on.
CATEGORIES = [
    ("all-gather: waiting for partitioned weights",
     ("AllGatherHandle.wait", "MultipleAllGatherHandles.wait", "AllGatherCoalescedHandle.wait")),
    ("all-gather: launching (copies of the offloaded partitions in, buffers)",
     ("PartitionedParameterCoordinator.__all_gather_params", "Init._allgather_params_coalesced")),
    ("gradient reduce-scatter and partitioning",
     ("reduce_partition_and_remove_grads", "independent_gradient_partition_epilogue", "allreduce_gradients")),
    ("optimizer step (CPU Adam, copies back, persistent re-gather)", ("DeepSpeedEngine.step",)),
    ("ZeRO-3 module hooks: fetch/release bookkeeping",
     ("PartitionedParameterCoordinator.fetch_sub_module", "PartitionedParameterCoordinator.release_sub_module",
      "PreBackwardFunctionForModule", "PostBackwardFunctionModule", "_pre_forward_module_hook",
      "_post_forward_module_hook", "DeepSpeedZeRoOffload.pre_sub_module_forward_function",
      "DeepSpeedZeRoOffload.post_sub_module_forward_function", "_run_before_backward_function",
      "_run_after_backward_function")),
    ("TT contraction (forward)", ("TTFactorMatrix.forward", "tt_to_dense")),
    ("frozen linear layers: GEMMs forward and backward",
     ("LinearFunctionForZeroStage3.forward", "LinearFunctionForZeroStage3.backward")),
    ("adapter layers, rest of forward", ("LorettaRepLinear.forward", "LorettaAdpLinear.forward",
                                         "LorettaAdpLinear.adapter", "Linear.forward (peft")),
    ("autograd engine (backward kernels, no Python frame)", ("_engine_run_backward",)),
    ("loss", ("cross_entropy",)),
    ("rest of the model forward (attention, norms, embedding)", ("LlamaModel.forward", "LlamaForCausalLM.forward")),
]
OTHER = "trainer and everything else"


def _frame_names(stack: str) -> list[str]:
    # "name (path/file.py:line)" -> "name (path/file.py" so that names and files both match.
    return [frame.rsplit(":", 1)[0] for frame in stack.split(";")]


def breakdown(path: str | Path) -> tuple[int, collections.Counter]:
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("<module>"):  # other threads (tqdm monitor, heartbeat): idle
            continue
        if "Trainer.train (" not in stack or "Trainer.evaluate_and_log (" in stack or "save_checkpoint (" in stack:
            continue  # setup, the final evaluation and checkpoint, shutdown: not a training step
        frames = _frame_names(stack)
        total += int(count)
        for name, markers in CATEGORIES:
            if any(marker in frame for frame in frames for marker in markers):
                counts[name] += int(count)
                break
        else:
            counts[OTHER] += int(count)
    return total, counts


def print_breakdown(path: str, label: str | None) -> None:
    total, counts = breakdown(path)
    print(f"{label or path}: {total} samples of rank 0's main thread")
    for name, _ in CATEGORIES + [(OTHER, ())]:
        if counts[name]:
            print(f"  {100 * counts[name] / total:5.1f}%  {name}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rank_pids(run_dir: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if any(a.endswith("launch/train.py") for a in args) and any(a.startswith("--local_rank") for a in args) \
                and run_dir in args:
            pids.append(int(entry.name))
    return pids


def watch(run_dir: str, first: int, last: int, out: str) -> None:
    """CPU seconds (user + system, all ranks) and wall seconds between the moments step ``first``
    and step ``last`` appear in metrics.jsonl: the work of the measured steps, which time spent
    descheduled on a loaded machine does not inflate. Polls every 50 ms."""
    metrics = Path(run_dir) / "metrics.jsonl"
    marks = {}
    seen = False
    while len(marks) < 2:
        text = metrics.read_text() if metrics.is_file() else ""
        for step in (first, last):
            if step not in marks and f'"step": {step},' in text:
                pids = _rank_pids(run_dir)
                try:
                    marks[step] = (time.perf_counter(), sum(_cpu_seconds(p) for p in pids), len(pids))
                except OSError:
                    marks[step] = (time.perf_counter(), float("nan"), 0)
        alive = bool(_rank_pids(run_dir))
        if seen and not alive:  # the run ended (or failed) before its last measured step
            break
        seen = seen or alive
        time.sleep(0.05)
    if len(marks) == 2:
        (w0, c0, n), (w1, c1, _) = marks[first], marks[last]
        Path(out).write_text(json.dumps({"ranks": n, "steps": last - first, "cpu_s_per_step": (c1 - c0) / (last - first),
                                         "wall_s_per_step": (w1 - w0) / (last - first)}))


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}x ({min(values):.3f}-{max(values):.3f})"


def table(paths: list[str], out: Path | None, command: str | None = None) -> str:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    configs = list(dict.fromkeys(r["config"] for r in runs))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    by = {(r["config"], r["method"], r["repeat"]): r for r in runs}
    repeats = sorted({r["repeat"] for r in runs})
    lines = ["| config | method | trainable | step time s, median of runs (per run) | step / LoRA, per repeat: "
             f"median (range) | step / {configs[0]}, per repeat | CPU s per step, both ranks | CPU / LoRA, per "
             f"repeat | CPU / {configs[0]}, per repeat | runs |",
             "|---|---|---:|---|---|---|---:|---|---|---:|"]

    def ratios(key, config, method, other_config, other_method):
        values = []
        for k in repeats:
            mine, ref = by.get((config, method, k)), by.get((other_config, other_method, k))
            if mine and ref and mine.get(key) and ref.get(key):
                values.append(mine[key] / ref[key])
        return values

    for config in configs:
        for method in methods:
            mine = [by[(config, method, k)] for k in repeats if (config, method, k) in by]
            if not mine:
                continue
            times = [r["step_time_s"] for r in mine]
            cpus = [r["cpu_s_per_step"] for r in mine if r.get("cpu_s_per_step")]
            vs_lora = ratios("step_time_s", config, method, config, "lora")
            cpu_vs_lora = ratios("cpu_s_per_step", config, method, config, "lora")
            vs_first = ratios("step_time_s", config, method, configs[0], method)
            lora_text = "1.000x" if method == "lora" else (_spread(vs_lora) if vs_lora else "-")
            cpu_lora_text = "1.000x" if method == "lora" else (_spread(cpu_vs_lora) if cpu_vs_lora else "-")
            cpu_vs_first = ratios("cpu_s_per_step", config, method, configs[0], method)
            cpu_first_text = _spread(cpu_vs_first) if cpu_vs_first and config != configs[0] else "-"
            cpu_text = f"{statistics.median(cpus):.2f} | {cpu_lora_text} | {cpu_first_text}" if cpus else "- | - | -"
            lines.append(f"| {config} | {method} | {mine[0]['trainable']:,} | {statistics.median(times):.2f} "
                         f"({', '.join(f'{t:.2f}' for t in times)}) | {lora_text} | "
                         f"{_spread(vs_first) if vs_first and config != configs[0] else '-'} | {cpu_text} | "
                         f"{len(mine)} |")
    loads = ", ".join(r["load_after"].split()[0] for r in runs)
    tokens = statistics.median(r["tokens_per_step"] for r in runs)
    head = f"Command: `{command}`\n\n" if command else ""
    text = head + "\n".join(lines) + f"\n\nTokens per step (median): {tokens:.0f}. Load average (1 min) after each run: {loads}.\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.md").write_text(text)
        (out / "speed.json").write_text(json.dumps(runs, indent=1) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    t = sub.add_parser("table")
    t.add_argument("runs", nargs="+")
    t.add_argument("--out", type=Path, default=None)
    t.add_argument("--command", default=None, help="the command that made the runs, for the table's head")
    w = sub.add_parser("watch")
    w.add_argument("run_dir")
    w.add_argument("first", type=int)
    w.add_argument("last", type=int)
    w.add_argument("out")
    b = sub.add_parser("breakdown")
    b.add_argument("profile")
    b.add_argument("--label", default=None)
    args = parser.parse_args(argv)
    if args.action == "table":
        print(table(args.runs, args.out, args.command))
    elif args.action == "watch":
        watch(args.run_dir, args.first, args.last, args.out)
    else:
        print_breakdown(args.profile, args.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
