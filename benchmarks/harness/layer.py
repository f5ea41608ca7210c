"""One adapted projection in isolation: what each adapter adds to a frozen linear layer.

A whole-model step on a shared CPU varies by +-10% from step to step, more than the differences
between adapters; a single layer runs in milliseconds, so hundreds of alternating repetitions
pin its cost down. Each repetition is forward + backward (to the input and the adapter's
parameters) of a frozen d x d projection with one adapter, on ``tokens`` rows. Reported: the
median time, and the overhead over the plain frozen layer as the median of per-round differences.

`python -m benchmarks.bench --layer` runs it; the full-model table says how much of that shows up end to end.
"""
from __future__ import annotations

import copy
import importlib.util
import statistics
import time
import warnings

import torch
from torch import nn

from .baselines import DenseAdapterLinear


def _loretta(kind: str, base: nn.Linear) -> nn.Module:
    from loretta_ds.adapters import LorettaAdpLinear, LorettaRepLinear

    if kind.startswith("rep"):
        layer = LorettaRepLinear(base, 8, 16.0, 5)
    else:
        layer = LorettaAdpLinear(base, "input", 64, 5)
    layer.reset_parameters("reference")  # non-zero everywhere: no path is trivially cheap
    return layer


def _peft_lora(base: nn.Linear) -> nn.Module:
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear

    return Linear(base, "default", LoraConfig(r=8, lora_alpha=16), r=8, lora_alpha=16)


def _reference(kind: str, base: nn.Linear) -> nn.Module:
    from loretta.tuners import loretta_adp, loretta_rep

    d_out, d_in = base.weight.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "ref_rep":
            layer = loretta_rep.Linear(d_in, d_out, r=8, lora_alpha=16, tensor_rank=5, bias=False)
        else:
            layer = loretta_adp.Linear(d_in, d_out, adapter_type="mh_adapter", bottleneck_size=64,
                                       non_linearity="relu", adapter_dropout=0.0, scaling=1.0,
                                       init_weights="bert", tensorized=True, tensor_rank=5, bias=False)
    with torch.no_grad():
        layer.weight.copy_(base.weight)
    layer.weight.requires_grad_(False)
    return layer


def build_layer(kind: str, base: nn.Linear) -> nn.Module | None:
    """``kind`` around a copy of ``base``; None if its package is missing."""
    base = copy.deepcopy(base)
    if kind == "frozen":
        return base
    if kind in ("rep", "adp"):
        return _loretta(kind, base)
    if kind == "adapter":
        return DenseAdapterLinear(base, "input", 64)
    if kind == "lora":
        return _peft_lora(base) if importlib.util.find_spec("peft") else None
    if kind in ("ref_rep", "ref_adp"):
        if importlib.util.find_spec("loretta") is None:
            return None
        try:
            return _reference(kind, base)
        except KeyError:  # the reference's fixed shape table has no entry for this size
            return None
    raise ValueError(f"unknown layer kind {kind!r}")


LAYER_KINDS = ["frozen", "lora", "rep", "ref_rep", "adapter", "adp", "ref_adp"]


def layer_bench(features: int = 768, tokens: int = 1024, repeats: int = 200, warmup: int = 5,
                threads: int = 1, kinds: list[str] | None = None, clock=time.perf_counter) -> list[dict]:
    """Alternating fwd+bwd timings of one adapted ``features`` x ``features`` projection."""
    with warnings.catch_warnings():
        # the reference enters the deprecated torch.cuda.amp.autocast on every call
        warnings.filterwarnings("ignore", message=r".*autocast.*")
        return _layer_bench(features, tokens, repeats, warmup, threads, kinds, clock)


def _layer_bench(features, tokens, repeats, warmup, threads, kinds, clock) -> list[dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = nn.Linear(features, features, bias=False).requires_grad_(False)
    layers = {k: m for k in (kinds or LAYER_KINDS) if (m := build_layer(k, base)) is not None}
    if "frozen" not in layers:
        layers = {"frozen": build_layer("frozen", base), **layers}
    x = torch.randn(tokens, features, requires_grad=True)
    grad = torch.randn(tokens, features)

    def step(layer: nn.Module) -> float:
        start = clock()
        layer(x).backward(grad)
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        return clock() - start

    names = list(layers)
    for _ in range(warmup):
        for name in names:
            step(layers[name])
    times = {name: [] for name in names}
    for i in range(repeats):
        start = i % len(names)
        for name in names[start:] + names[:start]:
            times[name].append(step(layers[name]))
    frozen = times["frozen"]
    rows = []
    for name in names:
        overhead = [t - f for t, f in zip(times[name], frozen)]
        rows.append({"kind": name, "ms": 1e3 * statistics.median(times[name]),
                     "overhead_ms": 1e3 * statistics.median(overhead)})
    lora = next((r for r in rows if r["kind"] == "lora"), None)
    for row in rows:
        row["overhead_vs_lora"] = (row["overhead_ms"] / lora["overhead_ms"]
                                   if lora and lora["overhead_ms"] > 0 else None)
    return rows


def layer_table(rows: list[dict], features: int, tokens: int, repeats: int) -> str:
    lines = [f"One {features} x {features} frozen projection + adapter, {tokens} tokens, forward + backward, "
             f"median of {repeats} alternating repetitions:", "",
             "| layer | fwd+bwd ms | overhead over frozen ms | overhead / LoRA's |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = "-" if r["overhead_vs_lora"] is None else f"{r['overhead_vs_lora']:.2f}x"
        lines.append(f"| {r['kind']} | {r['ms']:.2f} | {r['overhead_ms']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"
