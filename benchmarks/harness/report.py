"""Write a BenchReport as a markdown table, a JSON file and a PNG chart."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .runner import BenchReport


def _bytes(n: int | None) -> str:
    if not n:
        return "0"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}x"


def to_markdown(report: BenchReport) -> str:
    cfg, m = report.config, report.machine
    lines = [
        f"LLaMA architecture, hidden {cfg['hidden']}, intermediate {cfg['intermediate']}, "
        f"{cfg['layers']} layers, {cfg['heads']} heads, vocab {cfg['vocab']}; batch {cfg['batch']} x "
        f"seq {cfg['seq_len']}; {cfg['dtype']} on {m.get('gpu') or m['cpu']} "
        f"({m['torch_threads']} torch thread(s)); {'process CPU' if cfg.get('clock') == 'cpu' else 'wall-clock'} time, median of {cfg['steps']} alternating steps after "
        f"{cfg['warmup']} warm-up; load average before/after: {m.get('load_before')} / {m.get('load_after')}.",
        "",
        "| contender | trainable params | train step ms (IQR) | forward ms | tokens/s | step / LoRA "
        "| step / floor | peak step mem | step RSS peak | optimizer state | checkpoint | ckpt w/o norms | LoRA ckpt / this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r['label']}{' [' + r['attn'] + ']' if len(cfg['attn']) > 1 else ''} "
            f"| {r['trainable_params']:,} "
            f"| {r['step_ms']:.1f} ({r['step_ms_q1']:.1f}-{r['step_ms_q3']:.1f}) "
            f"| {r['forward_ms']:.1f} | {r['tokens_per_s']:,.0f} "
            f"| {_ratio(r['step_vs_lora'])} | {_ratio(r['step_vs_floor'])} "
            f"| {_bytes(r['peak_step_bytes'])} | {_bytes(r['rss_peak_step_bytes']) if r['rss_peak_step_bytes'] is not None else '-'} "
            f"| {_bytes(r['optimizer_state_bytes'])} "
            f"| {_bytes(r['checkpoint_bytes'])} | {_bytes(r['checkpoint_bytes_without_norms'])} "
            f"| {_ratio(r['checkpoint_lora_over'])} |")
    lines += ["", f"Peak step memory: {report.memory_method}. Sizes: KiB/MiB are 1024-based; "
              "checkpoint = the trainable tensors saved with safetensors."]
    for name, why in report.skipped.items():
        lines.append(f"Skipped {name}: {why}.")
    if report.llama2_checkpoints:
        from .checkpoints import checkpoint_table
        lines += ["", "Checkpoint files at the LLaMA-2 shapes (trainable tensors of a meta-device model, "
                  "materialized in bf16 and saved with safetensors):", "", checkpoint_table(report.llama2_checkpoints)]
    return "\n".join(lines) + "\n"


def to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2) + "\n"


def to_png(report: BenchReport, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    labels = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    step = [r["step_ms"] for r in rows]
    errors = [[r["step_ms"] - r["step_ms_q1"] for r in rows], [r["step_ms_q3"] - r["step_ms"] for r in rows]]
    axes[0].bar(labels, step, yerr=errors, capsize=3, color="tab:blue")
    axes[0].set_ylabel("train step, ms (median, IQR)")
    axes[1].bar(labels, [r["peak_step_bytes"] / 2**20 for r in rows], color="tab:orange")
    axes[1].set_ylabel("peak memory during a step, MiB")
    ckpt = [r["checkpoint_bytes"] or float("nan") for r in rows]  # nothing to save: no bar
    axes[2].bar(labels, ckpt, color="tab:green")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("checkpoint bytes (log)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    cfg = report.config
    fig.suptitle(f"hidden {cfg['hidden']}, {cfg['layers']} layers, batch {cfg['batch']} x seq {cfg['seq_len']}, "
                 f"{cfg['dtype']}, {cfg['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(report: BenchReport, out_dir: Path, stem: str = "bench", chart: bool = True) -> dict[str, Path]:
    """Write <stem>.md (with the command), <stem>.json and, if ``chart``, <stem>.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    command = f"Command: `{report.command}`\n\n" if report.command else ""
    paths["md"].write_text(command + to_markdown(report))
    paths["json"].write_text(to_json(report))
    if chart:
        paths["png"] = out_dir / f"{stem}.png"
        to_png(report, paths["png"])
    return paths
