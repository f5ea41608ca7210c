"""Quality benchmark on a real pretrained model: LoRETTA_rep, LoRETTA_adp and PEFT LoRA r=8 against
the untrained base model, SmolLM2-135M-Instruct, two tasks with checkable answers, 3 seeds.

    nice -n 10 python benchmarks/quality.py            # the table in docs/benchmarks.md, section 7

Every run is ``launch/train.py`` in one process (``--ds_config zero2``: with one process ZeRO
partitions nothing, so the stage does not change what is learned, and stage 2 spares the CPU
offload copies), with the same data, steps, batch, precision and schedule for every method; only
the method (and its learning rate, ``--lr``) differs. The tasks come from
``benchmarks/quality_data.py``:

* ``reviews``: classification by label-word likelihood (the trainer's eval accuracy, on 200
  held-out reviews; the step-0 eval of the same run is the base model's accuracy);
* ``dates``: exact match of the greedy answer on 200 held-out dates (the run's adapter loaded on
  the base model with ``loretta_ds.commands.generate.load_for_generation``, batched greedy decoding
  here; the base model is scored the same way).

Per run it records accuracy, trainable parameters (the run's param_report.json), the adapter
file's bytes, and the median step time (steps 2..N, from metrics.jsonl; one process, so a step
is forward + backward + optimizer). Results: ``--out`` (default benchmarks/results/quality/):
quality.json (every run), quality.md (the tables), quality.png. Runs live under ``--work``
(default runs/quality/, git-ignored); a finished run is reused, so an interrupted benchmark
continues where it stopped (``--fresh`` trains everything again).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_data  # noqa: E402  (the sibling module, not a package)

TASK_FORMATS = {"reviews": "classification", "dates": "prompt_completion"}
TASK_METRIC = {"reviews": "accuracy (label-word likelihood)", "dates": "exact match (greedy)"}
METHOD_NAMES = {"base": "base model, no training", "rep": "LoRETTA_rep", "adp": "LoRETTA_adp",
                "lora": "LoRA r=8 (PEFT)", "rep-4bit": "LoRETTA_rep, 4-bit NF4 base",
                "adp-4bit": "LoRETTA_adp, 4-bit NF4 base", "lora-4bit": "QLoRA: LoRA r=8 (PEFT), 4-bit NF4 base"}
# A method name ending in -4bit trains that method on the base loaded with --load_in_4bit (NF4,
# double quantization, compute in the run's precision); its lr is the method's.
QUANTIZED_SUFFIX = "-4bit"


def base_method(method: str) -> str:
    return method.removesuffix(QUANTIZED_SUFFIX)
# One learning rate per method, picked on a dev split (the same generators, --data_seed 99, seed 0,
# same steps and batch) from two values each, by the mean of the two tasks: LoRA {1e-3, 3e-3},
# rep and adp {3e-3, 1e-2}. All three chose 3e-3 (benchmarks/results/quality/lr_selection.md).
DEFAULT_LRS = {"rep": 3e-3, "adp": 3e-3, "lora": 3e-3}
ADAPTER_FILES = ("adapter.safetensors", "adapter_model.safetensors")


def parse_lrs(text: str) -> dict[str, float]:
    lrs = dict(DEFAULT_LRS)
    for item in filter(None, text.split(",")):
        method, _, value = item.partition("=")
        if method not in DEFAULT_LRS:
            raise SystemExit(f"--lr: unknown method {method!r}; use rep, adp or lora")
        lrs[method] = float(value)
    return lrs


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_finished(run_dir: Path) -> bool:
    config = run_dir / "run_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("finished"))


def train(args, task: str, data_dir: Path, method: str, seed: int, lr: float, run_dir: Path) -> float:
    """Train one run (skipped when it finished before); returns its wall time in seconds."""
    if run_finished(run_dir) and not args.fresh:
        return float(json.loads((run_dir / "run_config.json").read_text()).get("wall_time_s", 0.0))
    command = [sys.executable, str(ROOT / "launch" / "train.py"), "--model", args.model,
               "--dataset", str(data_dir), "--format", TASK_FORMATS[task], "--method", base_method(method),
               "--seed", str(seed), "--lr", str(lr), "--max_steps", str(args.steps),
               "--micro_batch_size", str(args.micro_batch_size), "--grad_accum", "1",
               "--seq_len", str(args.seq_len), "--bf16", str(args.bf16).lower(), "--ds_config", "zero2",
               "--eval_every", str(args.eval_every), "--save_every", "0", "--keep_last", "1",
               *(["--eval_batches", str(-(-args.eval_items // args.micro_batch_size))] if args.eval_items else []),
               "--export", "false", "--output_dir", str(run_dir), "--overwrite_output_dir", "true"]
    if method.endswith(QUANTIZED_SUFFIX):
        command += ["--load_in_4bit", "true"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    log = run_dir.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        # wait4: the peak resident memory of this training process alone (ru_maxrss, KiB on Linux).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    run_dir.with_suffix(".peak_rss_mb").write_text(f"{usage.ru_maxrss / 1024:.1f}\n")
    done = process
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"training failed ({' '.join(command)}):\n{tail}")
    return time.perf_counter() - started


def batched_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 50) -> list[str]:
    """Greedy completions, left-padded batches (the prompts are encoded as in training: the
    tokenizer's own special tokens, no chat template). Stops at eos."""
    import torch

    from loretta_ds.data.tokenization import pad_id_of

    tokenizer.padding_side = "left"
    pad = pad_id_of(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad
    texts = []
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
                                    temperature=None, top_p=None, top_k=None)
        width = encoded["input_ids"].shape[1]
        texts += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return texts


def exact_match(path: Path, records: list[dict], bf16: bool, threads: int) -> tuple[list[bool], list[str]]:
    """Per item, whether the greedy answer of the model at ``path`` (a run directory: base +
    adapter; or a model directory), in the run's precision, equals the reference; and the answers."""
    import torch

    from loretta_ds.commands.generate import load_for_generation

    torch.set_num_threads(threads)
    model, tokenizer, _ = load_for_generation(path)
    if bf16 and not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit base loads in the run's precision
        model = model.to(torch.bfloat16)
    answers = batched_greedy(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=16)
    return [a.strip() == r["completion"].strip() for a, r in zip(answers, records)], answers


def date_scores(hits: list[bool], records: list[dict]) -> dict[str, float]:
    """Exact match overall, on the items that only change the format, and on those that add days."""
    offset = [" after " in r["prompt"] for r in records]
    def share(keep):
        chosen = [h for h, k in zip(hits, keep) if k]
        return sum(chosen) / max(1, len(chosen))
    return {"score": share([True] * len(hits)), "score_format_only": share([not o for o in offset]),
            "score_add_days": share(offset)}


def adapter_bytes(run_dir: Path) -> int:
    for name in ADAPTER_FILES:
        path = run_dir / "adapter" / name
        if path.is_file():
            return path.stat().st_size
    raise FileNotFoundError(f"no adapter file in {run_dir / 'adapter'}")


def run_record(args, task: str, method: str, seed: int, lr: float, run_dir: Path, wall: float,
               eval_records: list[dict]) -> dict:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    steps = [m for m in metrics if m.get("kind") == "train"]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    report = json.loads((run_dir / "param_report.json").read_text())
    record = {"task": task, "method": method, "seed": seed, "lr": lr, "run_dir": str(run_dir),
              "trainable": report["trainable"]["numel"], "adapter_bytes": adapter_bytes(run_dir),
              "step_time_s": statistics.median(m["step_time_s"] for m in steps[1:]),
              "peak_rss_mb": _peak_rss(run_dir),
              "wall_time_s": round(wall, 1),
              "curve": [{"step": e["step"], "loss": e["loss"], **({"accuracy": e["accuracy"]} if "accuracy" in e else {})}
                        for e in evals]}
    if task == "reviews":
        record["score"] = evals[-1]["accuracy"]
        record["base_score"] = evals[0]["accuracy"]  # step 0: the adapted model equals the base
    else:
        hits, answers = exact_match(run_dir, eval_records, args.bf16, args.threads)
        record.update(date_scores(hits, eval_records))
        record["samples"] = [{"prompt": r["prompt"].split("Date: ")[1].split("\n")[0], "gold": r["completion"].strip(),
                              "answer": a} for r, a in zip(eval_records[:5], answers[:5])]
    return record


def _peak_rss(run_dir: Path) -> float | None:
    path = run_dir.with_suffix(".peak_rss_mb")
    return float(path.read_text()) if path.is_file() else None


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def summarize(runs: list[dict], base: dict[str, dict]) -> dict:
    summary = {}
    for task in TASK_FORMATS:
        task_runs = [r for r in runs if r["task"] == task]
        if not task_runs:
            continue
        rows = {"base": {"score": spread([base[task]["score"]]), "trainable": 0, "adapter_bytes": 0,
                         **({"format_only": spread([base[task]["score_format_only"]]),
                             "add_days": spread([base[task]["score_add_days"]])} if task == "dates" else {})}}
        for method in dict.fromkeys(r["method"] for r in task_runs):
            mine = sorted((r for r in task_runs if r["method"] == method), key=lambda r: r["seed"])
            if not mine:
                continue
            rows[method] = {"score": spread([r["score"] for r in mine]), "trainable": mine[0]["trainable"],
                            **({"format_only": spread([r["score_format_only"] for r in mine]),
                                "add_days": spread([r["score_add_days"] for r in mine])} if task == "dates" else {}),
                            "adapter_bytes": mine[0]["adapter_bytes"], "lr": mine[0]["lr"],
                            "step_time_s": statistics.median(r["step_time_s"] for r in mine),
                            "peak_rss_mb": max((r.get("peak_rss_mb") or 0.0 for r in mine), default=0.0),
                            "seeds": [r["seed"] for r in mine]}
        lora = rows.get("lora")
        for method, row in rows.items():
            if lora is None or method in ("lora", "base"):
                continue
            gap = row["score"]["mean"] - lora["score"]["mean"]
            low, high = lora["score"]["min"], lora["score"]["max"]
            mean = row["score"]["mean"]
            row["gap_to_lora"] = gap
            row["vs_lora_spread"] = "within" if low <= mean <= high else ("above" if mean > high else "below")
            # Step time against LoRA seed by seed (same seed = runs taken close together).
            pairs = {r["seed"]: r["step_time_s"] for r in task_runs if r["method"] == "lora"}
            ratios = [r["step_time_s"] / pairs[r["seed"]] for r in task_runs
                      if r["method"] == method and r["seed"] in pairs]
            row["step_vs_lora"] = spread(ratios) if ratios else None
        summary[task] = rows
    return summary


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(summary: dict, meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`", "",
             f"Model {meta['model_name']}; {meta['steps']} steps, micro batch {meta['micro_batch_size']} "
             f"(one process), seq_len {meta['seq_len']}, {'bf16' if meta['bf16'] else 'fp32'}, "
             f"{meta['threads']} torch thread(s), seeds {meta['seeds']}; learning rates {meta['lrs']}. "
             f"Wall time {meta['wall_time_s'] / 60:.1f} min; load average before / after "
             f"{meta['load_before']} / {meta['load_after']}.", ""]
    for task, rows in summary.items():
        lines += [f"**{task}** ({TASK_METRIC[task]}, {meta['eval_items']} held-out items; % correct):", "",
                  "| method | trainable params | adapter file | mean | std | min-max | per seed | gap to LoRA (pts) "
                  "| vs LoRA's seed range | step time s | step / LoRA (mean of per-seed ratios, range) "
                  "| peak RSS MiB (max over seeds) |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|"]
        for method, row in rows.items():
            score = row["score"]
            per_seed = ", ".join(_pct(v) for v in score["values"])
            gap = f"{100 * row['gap_to_lora']:+.1f}" if "gap_to_lora" in row else "-"
            verdict = row.get("vs_lora_spread", "-")
            step = f"{row['step_time_s']:.2f}" if "step_time_s" in row else "-"
            ratio = row.get("step_vs_lora")
            ratio_text = (f"{ratio['mean']:.3f}x ({ratio['min']:.3f}-{ratio['max']:.3f})" if ratio
                          else ("1.000x" if method == "lora" else "-"))
            size = f"{row['adapter_bytes']:,} B" if row["adapter_bytes"] else "-"
            trainable = f"{row['trainable']:,}" if row["trainable"] else "0"
            lines.append(f"| {METHOD_NAMES[method]} | {trainable} | {size} | {_pct(score['mean'])} | "
                         f"{_pct(score['std'])} | {_pct(score['min'])}-{_pct(score['max'])} | {per_seed} | {gap} | "
                         f"{verdict} | {step} | {ratio_text} | {row.get('peak_rss_mb') or '-'} |")
        lines.append("")
        if task == "dates":
            lines += ["Exact match by kind of item (mean over seeds, min-max):", "",
                      "| method | format only (%) | add 1-9 days (%) |", "|---|---:|---:|"]
            for method, row in rows.items():
                parts = [f"{_pct(row[k]['mean'])} ({_pct(row[k]['min'])}-{_pct(row[k]['max'])})"
                         for k in ("format_only", "add_days")]
                lines.append(f"| {METHOD_NAMES[method]} | {parts[0]} | {parts[1]} |")
            lines.append("")
    return "\n".join(lines)


def plot(summary: dict, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5 * (len(tasks) + 1), 4))
    colours = {"base": "#999999", "rep": "#1f77b4", "adp": "#2ca02c", "lora": "#d62728",
               "rep-4bit": "#aec7e8", "adp-4bit": "#98df8a", "lora-4bit": "#ff9896"}  # lighter: the 4-bit base
    for ax, task in zip(axes, tasks):
        rows = summary[task]
        for x, (method, row) in enumerate(rows.items()):
            score = row["score"]
            ax.bar(x, 100 * score["mean"], color=colours[method], alpha=0.6)
            ax.errorbar(x, 100 * score["mean"], yerr=[[100 * (score["mean"] - score["min"])],
                                                      [100 * (score["max"] - score["mean"])]],
                        color="black", capsize=4)
            ax.scatter([x] * len(score["values"]), [100 * v for v in score["values"]], color="black", s=10, zorder=3)
        ax.set_xticks(range(len(rows)), [METHOD_NAMES[m].split(" (")[0].replace(", no training", "") for m in rows],
                      rotation=15)
        ax.set_ylabel("% correct")
        ax.set_ylim(0, 100)
        ax.set_title(f"{task}: {TASK_METRIC[task]}")
    ax = axes[-1]
    for method in ("rep", "adp", "lora"):
        curves = [r["curve"] for r in runs if r["task"] == "reviews" and r["method"] == method]
        for index, curve in enumerate(curves):
            ax.plot([c["step"] for c in curve], [100 * c["accuracy"] for c in curve], color=colours[method],
                    alpha=0.7, label=METHOD_NAMES[method] if index == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("% correct")
    ax.set_title("reviews: held-out accuracy during training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: the converted SmolLM2-135M-Instruct)")
    parser.add_argument("--tasks", default="reviews,dates")
    parser.add_argument("--methods", default="rep,adp,lora")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--micro_batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--bf16", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--lr", default="", help="per-method overrides, e.g. lora=1e-3,rep=3e-3")
    parser.add_argument("--eval_every", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: on a shared 2-core machine a second "
                             "thread mostly waits on OpenMP barriers)")
    parser.add_argument("--data_seed", type=int, default=1234,
                        help="seed of the generated data (another value gives a dev split for choosing lrs)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality"))
    parser.add_argument("--fresh", action="store_true", help="train every run again")
    parser.add_argument("--eval_items", type=int, default=None,
                        help="score on the first N held-out items of each task (default: all 200)")
    args = parser.parse_args(argv)

    from benchmarks.smollm2 import ensure_smollm2

    args.model = args.model or str(ensure_smollm2())
    lrs = parse_lrs(args.lr)
    tasks = args.tasks.split(",")
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data = quality_data.write_tasks(work / f"data-{args.data_seed}", seed=args.data_seed)
    eval_records = {task: read_jsonl(folder / "validation.jsonl")[:args.eval_items] for task, folder in data.items()}

    started, load_before = time.perf_counter(), load_average()
    base = {}
    if "dates" in tasks:
        hits, _ = exact_match(Path(args.model), eval_records["dates"], args.bf16, args.threads)
        base["dates"] = date_scores(hits, eval_records["dates"])
        print(f"base model, dates: exact match {base['dates']}", flush=True)
    runs = []
    for seed in seeds:
        for task in tasks:
            # Rotate the order per seed so that no method always runs first (load drifts).
            order = methods[seed % len(methods):] + methods[:seed % len(methods)]
            for method in order:
                run_dir = work / f"{task}-{method}-seed{seed}"
                lr = lrs[base_method(method)]
                wall = train(args, task, data[task], method, seed, lr, run_dir)
                record = run_record(args, task, method, seed, lr, run_dir, wall, eval_records[task])
                runs.append(record)
                if task == "reviews":
                    base.setdefault("reviews", {"score": record["base_score"]})
                    if abs(record["base_score"] - base["reviews"]["score"]) > 0.01:
                        print(f"note: step-0 accuracy {record['base_score']:.3f} of {run_dir} differs from "
                              f"{base['reviews']['score']:.3f}", flush=True)
                print(f"{task} {method} seed {seed}: {record['score']:.3f} (step {record['step_time_s']:.2f} s, "
                      f"run {wall:.0f} s, load {load_average()})", flush=True)
        write_results(args, argv, runs, base, seeds[:seeds.index(seed) + 1], lrs, methods, eval_records, started,
                      load_before, out)
    return 0


def write_results(args, argv, runs, base, seeds, lrs, methods, eval_records, started, load_before, out) -> None:
    """quality.json, quality.md and quality.png of the runs so far (rewritten after every seed, so
    an interrupted benchmark leaves the tables of the seeds it finished)."""
    summary = summarize(runs, base)
    command = "nice -n 10 python benchmarks/quality.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                            if (argv if argv is not None else sys.argv[1:]) else "")
    meta = {"command": command.strip(), "model": args.model, "model_name": "SmolLM2-135M-Instruct (GGUF Q4_1 -> float32)",
            "steps": args.steps, "micro_batch_size": args.micro_batch_size, "seq_len": args.seq_len, "bf16": args.bf16,
            "threads": args.threads, "seeds": seeds, "lrs": {m: lrs[base_method(m)] for m in methods}, "data_seed": args.data_seed,
            "eval_items": len(next(iter(eval_records.values()))),
            "wall_time_s": time.perf_counter() - started, "load_before": load_before, "load_after": load_average()}
    (out / "quality.json").write_text(json.dumps({"meta": meta, "base": base, "summary": summary, "runs": runs},
                                                 indent=1) + "\n")
    table = markdown(summary, meta)
    (out / "quality.md").write_text(table + "\n")
    plot(summary, runs, out / "quality.png")
    print(table, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
