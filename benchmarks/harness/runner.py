"""Run the benchmark: build every contender, time them alternately, then measure memory and sizes.

Clock: wall time (perf_counter) by default. ``clock="cpu"`` times with the process's CPU time
instead (time.process_time): on a shared CPU machine, time spent descheduled while other
processes run is then not charged to whichever contender happened to be running (memory-bandwidth
and cache contention still are). On CUDA only wall time means anything.

Timing protocol: after ``warmup`` untimed steps each, round i runs one training step of every
contender, starting at contender i mod n (a rotation, so no contender always runs first or right
after the same neighbour). A step is forward (to the loss), backward, AdamW step + zero_grad;
each phase is timed separately with the device synchronized at its edges. Reported figures are
medians over the rounds; ratios are medians of per-round ratios, which cancels load that drifts
slowly across rounds (other processes on a shared machine).
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field

import torch

from .config import BenchConfig
from .contenders import Contender, ContenderUnavailable, build_contender
from .memory import ProcPeakMeter, SampledPeakMeter, peak_meter, rss_meter
from .model import build_base
from .sizes import checkpoint_bytes, optimizer_state_bytes, trainable_params


@dataclass
class BenchReport:
    config: dict
    machine: dict
    memory_method: str
    rows: list[dict]
    skipped: dict[str, str] = field(default_factory=dict)
    command: str = ""
    llama2_checkpoints: list[dict] = field(default_factory=list)  # see harness/checkpoints.py


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(c: Contender, ids: torch.Tensor, device: torch.device, clock=time.perf_counter) -> tuple[float, float, float]:
    """One training step of ``c``; returns (forward, backward, optimizer) seconds of ``clock``."""
    _sync(device)
    t0 = clock()
    loss = c.loss(ids)
    _sync(device)
    t1 = clock()
    loss.backward()
    _sync(device)
    t2 = clock()
    if c.optimizer is not None:
        c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return t1 - t0, t2 - t1, clock() - t2


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, threads: int) -> dict:
    info = {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__, "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["load_before"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _build_all(cfg: BenchConfig, device: torch.device, log) -> tuple[list[Contender], dict[str, str]]:
    contenders, skipped = [], {}
    for attn in cfg.attn:
        suffix = "" if len(cfg.attn) == 1 else f"/{attn}"
        try:
            base = build_base(cfg, attn, device)
        except (ImportError, ValueError, RuntimeError) as err:
            skipped[f"all contenders with {attn}"] = f"attention {attn!r} unavailable: {err}"
            log(f"skipping attention {attn}: {err}")
            continue
        for name in cfg.contenders:
            try:
                c = build_contender(name, base, cfg.lr, cfg.train_norms)
            except ContenderUnavailable as err:
                skipped[name + suffix] = str(err)
                log(f"skipping {name + suffix}: {err}")
                continue
            c.name, c.attn = name + suffix, attn
            contenders.append(c)
        del base
        gc.collect()
    return contenders, skipped


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run_bench(cfg: BenchConfig, log=print) -> BenchReport:
    with warnings.catch_warnings():
        # The reference package enters torch.cuda.amp.autocast on every call (deprecated, and
        # disabled without CUDA); its warnings say nothing about the measurement.
        warnings.filterwarnings("ignore", message=r".*autocast.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
        return _run(cfg, log)


def _run(cfg: BenchConfig, log) -> BenchReport:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no GPU; use --device cpu")
    torch.set_num_threads(cfg.threads)
    machine = machine_info(device, cfg.threads)
    contenders, skipped = _build_all(cfg, device, log)
    if not contenders:
        raise ValueError(f"no contender could be built: {skipped}")
    generator = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq_len), generator=generator).to(device)
    n = len(contenders)
    log(f"{n} contenders, {cfg.tokens} tokens/step, {cfg.threads} thread(s), {cfg.warmup} warm-up "
        f"+ {cfg.steps} timed steps each")

    for _ in range(cfg.warmup):
        for c in contenders:
            train_step(c, ids, device)
    clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
    times = {c.name: [] for c in contenders}
    for round_index in range(cfg.steps):
        start = round_index % n
        for c in contenders[start:] + contenders[:start]:
            times[c.name].append(train_step(c, ids, device, clock))
        log(f"  round {round_index + 1}/{cfg.steps}")

    meter = peak_meter(device)
    meters = {"tensor": meter}
    if device.type == "cpu" and not isinstance(meter, (ProcPeakMeter, SampledPeakMeter)):
        meters["rss"] = rss_meter()  # created last: it changes malloc's settings for the process
    peaks = {(kind, c.name): [] for kind in meters for c in contenders}
    for kind, m in meters.items():
        for round_index in range(cfg.memory_repeats):
            start = round_index % n
            for c in contenders[start:] + contenders[:start]:
                peaks[kind, c.name].append(m.measure(lambda c=c: train_step(c, ids, device)))
    if hasattr(os, "getloadavg"):
        machine["load_after"] = [round(x, 2) for x in os.getloadavg()]

    rows = [_row(c, times[c.name], peaks["tensor", c.name], peaks.get(("rss", c.name)), cfg) for c in contenders]
    _add_ratios(rows, times)
    method = meter.method + (f"; RSS column: {meters['rss'].method}" if "rss" in meters else "")
    return BenchReport(cfg.to_dict(), machine, method, rows, skipped)


def _row(c: Contender, samples: list[tuple[float, float, float]], peaks: list[int],
         rss_peaks: list[int] | None, cfg: BenchConfig) -> dict:
    step = [sum(s) for s in samples]
    q1, q3 = _quartiles(step)
    median_step = statistics.median(step)
    return {
        "name": c.name, "label": c.label, "attn": c.attn,
        "trainable_params": trainable_params(c.model),
        "step_ms": 1e3 * median_step, "step_ms_q1": 1e3 * q1, "step_ms_q3": 1e3 * q3,
        "forward_ms": 1e3 * statistics.median(s[0] for s in samples),
        "backward_ms": 1e3 * statistics.median(s[1] for s in samples),
        "optimizer_ms": 1e3 * statistics.median(s[2] for s in samples),
        "tokens_per_s": cfg.tokens / median_step,
        "peak_step_bytes": int(statistics.median(peaks)),
        "rss_peak_step_bytes": int(statistics.median(rss_peaks)) if rss_peaks else None,
        "optimizer_state_bytes": optimizer_state_bytes(c.optimizer),
        "checkpoint_bytes": checkpoint_bytes(c.model),
        "checkpoint_bytes_without_norms": checkpoint_bytes(c.model, include_norms=False),
        "step_ms_samples": [round(1e3 * s, 3) for s in step],
    }


def _add_ratios(rows: list[dict], times: dict[str, list]) -> None:
    """step_vs_lora / step_vs_floor: median per-round time ratio against the same-attention
    LoRA / floor; checkpoint_lora_over: how many times larger LoRA's checkpoint is."""
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        suffix = row["name"][len(row["name"].split("/")[0]):]
        step = [sum(s) for s in times[row["name"]]]
        for ref, key in (("lora", "step_vs_lora"), ("floor", "step_vs_floor")):
            other = by_name.get(ref + suffix)
            row[key] = _median_ratio(step, [sum(s) for s in times[other["name"]]]) if other else None
        lora = by_name.get("lora" + suffix)
        row["checkpoint_lora_over"] = (lora["checkpoint_bytes"] / row["checkpoint_bytes"]
                                       if lora and row["checkpoint_bytes"] else None)
