"""Communication per training step of the real trainer under ZeRO-3, from DeepSpeed's comms logger.

``benchmarks/comm.sh`` launches ``benchmarks/comm_train.py`` (this module's ``train_with_probe``) with the
deepspeed launcher once per method. The probe wraps the engine's forward / backward / step of a
normal ``loretta-ds train`` run, and snapshots ``deepspeed.comm``'s comms logger (enabled through
a copy of the ds config with a ``comms_logger`` section) around the measured steps, so setup,
evaluation and checkpointing traffic is left out. Each rank writes ``comm_rank<R>.json`` into the
run directory; ``python -m benchmarks.harness.comm DIR...`` turns those into one table.

Byte counts come from the logger's message sizes (``msg_size``: the tensor handed to the
collective, per rank). Gradients reduced = the reduce-scatter (and all-reduce) inputs: the flat
gradient buffers ZeRO-3 builds from the trainable parameters. Parameters gathered = the
all-gather inputs (each rank's shard) x world size: the full weights assembled on every rank.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

COMMS_LOGGER = {"enabled": True, "verbose": False, "prof_all": True, "debug": False}
# Operation names as the logger records them -> the column they belong to.
GATHER_OPS = ("all_gather", "all_gather_into_tensor", "allgather_fn", "all_gather_coalesced")
REDUCE_OPS = ("reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_fn", "all_reduce",
              "all_reduce_coalesced", "inference_all_reduce")


def with_comms_logger(ds_config_path: str, out_path: str) -> str:
    """Write a copy of ``ds_config_path`` with the comms logger switched on; returns ``out_path``."""
    config = json.loads(Path(ds_config_path).read_text())
    config["comms_logger"] = dict(COMMS_LOGGER)
    Path(out_path).write_text(json.dumps(config, indent=2) + "\n")
    return out_path


def _snapshot() -> dict[str, dict[int, int]]:
    """{op: {message bytes: calls}} logged so far on this rank."""
    from deepspeed.comm.comm import comms_logger
    return {op: {int(size): int(rec[0]) for size, rec in sizes.items()}
            for op, sizes in copy.deepcopy(comms_logger.comms_dict).items()}


def _difference(after: dict, before: dict) -> dict[str, dict[str, int]]:
    """Per op: calls and bytes logged between two snapshots."""
    ops = {}
    for op, sizes in after.items():
        calls = bytes_ = 0
        for size, count in sizes.items():
            new = count - before.get(op, {}).get(size, 0)
            calls += new
            bytes_ += new * size
        if calls:
            ops[op] = {"calls": calls, "bytes": bytes_}
    return ops


class StepProbe:
    """Times the engine's forward, backward and step, and snapshots the comms logger between
    ``warmup`` and ``warmup + measured`` optimizer steps."""

    def __init__(self, engine, warmup: int, measured: int):
        self.engine, self.warmup, self.measured = engine, warmup, measured
        self.steps = 0
        self.current = self._zero()
        self.records: list[dict] = []
        self.before = self.after = None
        self.step_started = (time.perf_counter(), time.process_time())
        for phase, attr in (("forward", "forward"), ("backward", "backward"), ("step", "step")):
            setattr(engine, attr, self._timed(phase, getattr(engine, attr)))

    @staticmethod
    def _zero() -> dict[str, float]:
        return {"forward": 0.0, "backward": 0.0, "step": 0.0, "forward_cpu": 0.0, "backward_cpu": 0.0, "step_cpu": 0.0}

    def _timed(self, phase: str, method):
        # Wall time, and this process's CPU time: on a shared machine the latter leaves out time
        # spent descheduled or blocked in a collective waiting for the other rank.
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - wall
                self.current[phase + "_cpu"] += time.process_time() - cpu
                if phase == "step":
                    self._step_done()
        return timed

    def _step_done(self) -> None:
        if not self.engine.is_gradient_accumulation_boundary() and self.engine.global_steps == self.steps:
            return
        self.steps += 1
        now = (time.perf_counter(), time.process_time())
        record = dict(self.current, total=now[0] - self.step_started[0], total_cpu=now[1] - self.step_started[1])
        self.current = self._zero()
        self.step_started = now
        if self.warmup < self.steps <= self.warmup + self.measured:
            self.records.append(record)
        if self.steps == self.warmup:
            self.before = _snapshot()
        elif self.steps == self.warmup + self.measured:
            self.after = _snapshot()

    def result(self, method: str, rank: int, world_size: int, trainable: int) -> dict:
        if self.after is None:
            raise ValueError(f"only {self.steps} steps ran; give --max_steps > warmup + measured "
                             f"({self.warmup} + {self.measured})")
        ops = _difference(self.after, self.before)
        per_step = {op: {k: v / self.measured for k, v in d.items()} for op, d in ops.items()}
        median = lambda key: statistics.median(r[key] for r in self.records)
        return {"method": method, "rank": rank, "world_size": world_size, "trainable_params": trainable,
                "measured_steps": self.measured, "ops_per_step": per_step,
                # the logger sees each rank's shard; every rank assembles world_size shards
                "gather_bytes_per_step": world_size * sum(v["bytes"] for op, v in per_step.items() if op in GATHER_OPS),
                "reduce_bytes_per_step": sum(v["bytes"] for op, v in per_step.items() if op in REDUCE_OPS),
                "forward_s": median("forward"), "backward_s": median("backward"),
                "optimizer_step_s": median("step"), "step_s": median("total"),
                "forward_cpu_s": median("forward_cpu"), "backward_cpu_s": median("backward_cpu"),
                "optimizer_step_cpu_s": median("step_cpu"), "step_cpu_s": median("total_cpu"),
                "step_records": self.records}


class ProbeCallback:
    """Installs the StepProbe on the engine once the trainer has built it (a trainer callback)."""

    def __init__(self, warmup: int, measured: int):
        self.warmup, self.measured = warmup, measured
        self.probe: StepProbe | None = None

    def on_engine_ready(self, trainer) -> None:
        self.probe = StepProbe(trainer.engine, self.warmup, self.measured)


def train_with_probe(argv: list[str]) -> int:
    """``loretta-ds train`` with the probe installed; extra flags --comm_warmup, --comm_steps."""
    from loretta_ds.run_config import add_train_arguments, config_from_args
    from loretta_ds.trainer import Trainer

    parser = argparse.ArgumentParser(prog="benchmarks/comm_train.py")
    add_train_arguments(parser)  # the trainer's own flags, unchanged
    parser.add_argument("--comm_warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--comm_steps", type=int, default=5, help="steps measured")
    args = vars(parser.parse_args(argv))
    warmup, measured = args.pop("comm_warmup"), args.pop("comm_steps")
    cfg = config_from_args(args)
    callback = ProbeCallback(warmup, measured)
    trainer = Trainer(cfg, callbacks=[callback])
    status = trainer.run()
    if status == 0 and callback.probe is not None:
        trainable = int(sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters() if p.requires_grad))
        variant = " (no norms)" if cfg.method != "lora" and not cfg.adapter.train_norms else ""
        result = callback.probe.result(cfg.method + variant, trainer.rank, trainer.world_size, trainable)
        path = Path(cfg.output_dir) / f"comm_rank{trainer.rank}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
    return status


def _bytes(n: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def _merge_repeats(results: list[dict]) -> list[dict]:
    """One record per method: byte counts from the first run (they are deterministic), times the
    median over the runs' medians (runs of one method are repeated, alternating with the others,
    so a slow phase of a shared machine does not land on one method only)."""
    merged: dict[str, dict] = {}
    for r in results:
        merged.setdefault(r["method"], {**r, "runs": []})["runs"].append(r)
    for record in merged.values():
        for key in ("forward_s", "backward_s", "optimizer_step_s", "step_s", "step_cpu_s"):
            record[key] = statistics.median(run.get(key, float("nan")) for run in record["runs"])
    return list(merged.values())


def comm_table(results: list[dict]) -> str:
    """Markdown table from rank-0 results of several runs (ratios against the lora run)."""
    results = _merge_repeats(results)
    lora = next((r for r in results if r["method"] == "lora"), None)
    lines = ["| method | trainable params | grads reduced / step | vs LoRA | params gathered / step "
             "| forward ms | backward ms | optimizer step ms | step ms | step vs LoRA | step CPU ms | CPU vs LoRA | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        vs = lambda key: "-" if not lora or not lora[key] else f"{r[key] / lora[key]:.3f}x"
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {_bytes(r['reduce_bytes_per_step'])} "
                     f"| {vs('reduce_bytes_per_step')} | {_bytes(r['gather_bytes_per_step'])} "
                     f"| {1e3 * r['forward_s']:.0f} | {1e3 * r['backward_s']:.0f} "
                     f"| {1e3 * r['optimizer_step_s']:.0f} | {1e3 * r['step_s']:.0f} | {vs('step_s')} "
                     f"| {1e3 * r['step_cpu_s']:.0f} | {vs('step_cpu_s')} | {len(r['runs'])} |")
    ops = sorted({op for r in results for op in r["ops_per_step"]})
    lines += ["", "Per operation on rank 0, per step (calls, message bytes as logged):", "",
              "| method | " + " | ".join(ops) + " |", "|---|" + "---:|" * len(ops)]
    for r in results:
        cells = [f"{r['ops_per_step'][op]['calls']:.0f} x, {_bytes(r['ops_per_step'][op]['bytes'])}"
                 if op in r["ops_per_step"] else "-" for op in ops]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def make_model(out_dir: str, hidden: int, layers: int, intermediate: int, heads: int, seed: int = 0) -> Path:
    """A random-weight LLaMA of the given shape as an HF model directory, with the built-in
    tiny-llama's tokenizer (vocabulary 1024), so the trainer loads it like any local model."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from loretta_ds.tiny_llama import ensure_tiny_llama

    tokenizer_dir = ensure_tiny_llama()
    config = AutoConfig.from_pretrained(tokenizer_dir)
    config.update(dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads))
    torch.manual_seed(seed)
    out = Path(out_dir)
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness.comm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    table = sub.add_parser("table", help="one table from the comm_rank0.json of several run directories")
    table.add_argument("run_dirs", nargs="+")
    table.add_argument("--out", default="", help="also write the table here")
    model = sub.add_parser("make-model", help="a random LLaMA model directory for the runs")
    model.add_argument("out_dir")
    model.add_argument("--hidden", type=int, default=768)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--intermediate", type=int, default=2048)
    model.add_argument("--heads", type=int, default=12)
    config = sub.add_parser("ds-config", help="copy a ds config with the comms logger switched on")
    config.add_argument("source")
    config.add_argument("out")
    args = parser.parse_args(argv)
    if args.action == "make-model":
        make_model(args.out_dir, args.hidden, args.layers, args.intermediate, args.heads)
    elif args.action == "ds-config":
        with_comms_logger(args.source, args.out)
    else:
        results = [json.loads((Path(d) / "comm_rank0.json").read_text()) for d in args.run_dirs]
        text = comm_table(results)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
