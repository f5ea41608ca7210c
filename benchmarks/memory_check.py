"""`loretta-ds estimate` against measurement, and what gradient checkpointing saves (docs/benchmarks.md
section 3).

    python benchmarks/memory_check.py run --out_dir benchmarks/results/memory [--ds_config CONFIG] [--quick]

runs the real trainer (ZeRO-3 with CPU offload, fp32, gloo) on the built-in tiny-llama and on a
random hidden-768 LLaMA (4 layers, the tiny-llama tokenizer), at several --seq_len, with and without
--gradient_checkpointing, as 1 process (`python benchmarks/memory_check.py probe ...`) and 2
(`deepspeed --num_gpus 2 benchmarks/memory_check.py probe ...`), plus four 2-process runs with
stage3_max_live_parameters below the model's size (alone, and with stage3_max_reuse_distance at the
same value), and compares each run with the estimator's plan
for the same flags and --ds_config (default zero3_offload). Training rows are long text records cut
at --seq_len, so every row is exactly --seq_len tokens (the estimator's assumption). Writes
OUT_DIR/memory.json (every rank's figures) and OUT_DIR/memory.md (the tables of docs/benchmarks.md
section 3); `table --work WORK` plans the stored measurements again after an estimator change.

What is measured, per rank (the probe, ``MemoryProbe``):

* model states: anonymous resident memory (RssAnon, after gc and malloc_trim, with glibc returning
  every freed block of 64 KiB or more) after the last step minus the same just before the model
  loads. Compared with the plan's partitions + persistent weights + gradients + optimizer state
  (on a CPU machine the "GPU" share and the offloaded "host" share are the same memory).
* step peak: torch.profiler's memory timeline over one optimizer step (step 3, once DeepSpeed's
  prefetch trace is complete): the peak of live tensor bytes above those live when it starts,
  which is what CUDA's max_memory_allocated minus memory_allocated measures on a GPU. Compared
  with the plan's activations + gathered (working) weights.
* peak RSS of the rank during a step (VmHWM over step 4, reset through /proc/self/clear_refs):
  everything the process holds at the top of a step, libraries and allocator included.

* the largest number of partitioned parameters gathered at once, sampled as each module starts, and
  the number still gathered when the forward of the profiled step reaches the output head.

And, per (model, seq_len, checkpointing), activations alone (``activation_peak``; in bf16 too for
the hidden-768 model): one process, no DeepSpeed, the same model and adapter with every parameter
and gradient allocated before the step, so the profiler's peak over forward + loss (the trainer's
``token_loss_sum``) + backward is the activations and nothing else; beside it the bytes autograd
saves for backward (unique storages, parameters excluded) without checkpointing.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Runs from a checkout without installing the package.
sys.path.insert(0, str(REPO))

from benchmarks.harness.memory import profiler_peak, saved_tensor_bytes  # noqa: E402

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
PROFILED_STEP = 3   # DeepSpeed records its parameter trace in step 1 and prefetches from step 2
RSS_STEP = 4        # the profiler's own records would inflate RSS: the RSS peak is taken a step later
MIB = 2 ** 20


# ---------------------------------------------------------------- /proc and glibc

def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class Rss:
    """Resident memory that follows the tensors: glibc hands blocks of 64 KiB or more straight
    back to the kernel and keeps no free memory cached, so a freed tensor leaves the RSS."""

    def __init__(self):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self.libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        self.libc.mallopt(_M_TRIM_THRESHOLD, 0)

    def anon_bytes(self) -> int:
        gc.collect()
        self.libc.malloc_trim(0)
        return status_kib("RssAnon") * 1024

    @staticmethod
    def reset_peak() -> None:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the kernel's high-water mark (VmHWM) restarts from the current RSS

    @staticmethod
    def peak_bytes() -> int:
        return status_kib("VmHWM") * 1024


# ---------------------------------------------------------------- the probe inside a real run

class MemoryProbe:
    """A trainer callback: profiles step PROFILED_STEP, takes the RSS peak of step RSS_STEP and
    the resident memory after every step; writes OUTPUT_DIR/memory_rank<R>.json at the end."""

    def __init__(self, rss: Rss):
        self.rss = rss
        self.before_model = self.after_model = self.after_engine = 0
        self.after_steps: list[int] = []
        self.step_peak = None
        self.rss_step_peak = None
        self.rss_before_step = None
        self.max_gathered_numel = 0
        self.gathered_at_head_numel = None
        self.partitioned_numel = 0
        self._profiler = None

    def on_engine_ready(self, trainer) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        engine, probe = trainer.engine, self
        forward, step = engine.forward, engine.step

        def probed_forward(*args, **kwargs):
            if engine.training and probe._profiler is None and trainer.step + 1 == PROFILED_STEP:
                probe._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                probe._profiler.__enter__()
            if engine.training and trainer.step + 1 == RSS_STEP and probe.rss_before_step is None:
                probe.rss_before_step = status_kib("VmRSS") * 1024
                Rss.reset_peak()
            return forward(*args, **kwargs)

        def probed_step(*args, **kwargs):
            result = step(*args, **kwargs)
            if probe._profiler is not None and probe.step_peak is None and engine.is_gradient_accumulation_boundary():
                probe._profiler.__exit__(None, None, None)
                probe.step_peak = profiler_peak(probe._profiler)
                probe._profiler = False  # its records go; the resident memory after this step must not hold them
            if probe.rss_before_step is not None and probe.rss_step_peak is None:
                probe.rss_step_peak = Rss.peak_bytes()
            return result

        engine.forward, engine.step = probed_forward, probed_step

        # The largest set of ZeRO-3 weights gathered at once during a forward (sampled as each
        # module starts, after DeepSpeed's own pre-forward hook has fetched its parameters).
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        partitioned = [p for p in trainer.model.parameters() if hasattr(p, "ds_status") and not p.ds_persist]
        probe.partitioned_numel = sum(p.ds_numel for p in partitioned)

        def sample(module, args):
            if module.training and torch.is_grad_enabled():
                numel = sum(p.ds_numel for p in partitioned if p.ds_status != ZeroParamStatus.NOT_AVAILABLE)
                probe.max_gathered_numel = max(probe.max_gathered_numel, numel)
                if module is head and trainer.step + 1 == PROFILED_STEP:
                    probe.gathered_at_head_numel = numel  # what the forward still holds when it ends
        head = trainer.model.get_output_embeddings()
        for module in trainer.model.modules():
            module.register_forward_pre_hook(sample)

    def on_step_end(self, trainer, record) -> None:
        self.after_steps.append(self.rss.anon_bytes())

    def result(self, trainer) -> dict:
        return {"rank": trainer.rank, "world_size": trainer.world_size, "steps": trainer.step,
                "rss_anon_before_model": self.before_model, "rss_anon_after_model": self.after_model,
                "rss_anon_after_engine": self.after_engine, "rss_anon_after_steps": self.after_steps,
                "model_states_measured": self.after_steps[-1] - self.before_model,
                "step_peak_measured": self.step_peak, "rss_before_step": self.rss_before_step,
                "rss_step_peak": self.rss_step_peak, "max_gathered_numel": self.max_gathered_numel,
                "gathered_at_head_numel": self.gathered_at_head_numel, "partitioned_numel": self.partitioned_numel}


def probe_main(argv: list[str]) -> int:
    """`[deepspeed --num_gpus N] benchmarks/memory_check.py probe <loretta-ds train flags>`."""
    rss = Rss()  # before anything allocates: glibc's thresholds apply to every later block
    from loretta_ds.run_config import add_train_arguments, config_from_args
    from loretta_ds.trainer import Trainer

    parser = argparse.ArgumentParser(prog="benchmarks/memory_check.py probe")
    add_train_arguments(parser)  # the trainer's own flags, unchanged
    cfg = config_from_args(vars(parser.parse_args(argv)))
    probe = MemoryProbe(rss)

    class ProbedTrainer(Trainer):
        def setup_model(self) -> None:
            # Library code is not a model state: import what loading runs before the baseline.
            import transformers.models.llama.modeling_llama  # noqa: F401
            from transformers import AutoModelForCausalLM  # noqa: F401

            probe.before_model = rss.anon_bytes()
            super().setup_model()
            probe.after_model = rss.anon_bytes()

        def setup_engine(self) -> None:
            super().setup_engine()
            probe.after_engine = rss.anon_bytes()

    trainer = ProbedTrainer(cfg, callbacks=[probe])
    status = trainer.run()
    if status == 0:
        path = Path(cfg.output_dir) / f"memory_rank{trainer.rank}.json"
        path.write_text(json.dumps(probe.result(trainer), indent=2) + "\n")
    return status


# ---------------------------------------------------------------- activations alone, no DeepSpeed

def activation_peak(model_dir: str, method: str, seq_len: int, micro_batch_size: int, checkpointing: bool,
                    bf16: bool = False) -> dict:
    """Peak tensor bytes of one training step above the model states (see the module doc)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    from loretta_ds import LorettaConfig, inject
    from loretta_ds.loss import token_loss_sum

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 attn_implementation="sdpa")
    model.config.use_cache = False
    inject(model, LorettaConfig(method=method))
    if bf16:
        model.to(torch.bfloat16)  # the adapter's cores too, as the trainer's --bf16 loads them
    if checkpointing:  # as the trainer enables it (loretta_ds/trainer.py, setup_model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (micro_batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def run(backward: bool = True) -> None:
        loss = token_loss_sum(model, batch, torch.device("cpu"))
        if backward:
            loss.backward()

    run()  # first step: lazy allocations (the gradients exist already) happen outside the measurement
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    result = {"peak": profiler_peak(prof)}
    if not checkpointing:
        result["saved_for_backward"] = saved_tensor_bytes(model, lambda: run(backward=False))
    return result


# ---------------------------------------------------------------- the driver

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_text_data(path: Path, records: int = 400, chars: int = 12_000) -> Path:
    """Long text records (the bundled corpus, repeated), each longer than any --seq_len used here."""
    from loretta_ds.tiny_llama import corpus_documents

    text = " ".join(corpus_documents())
    with path.open("w") as handle:
        for i in range(records):
            start = (i * 997) % max(1, len(text) - chars)
            piece = (text[start:] + " " + text)[:chars]
            handle.write(json.dumps({"text": piece}) + "\n")
    return path


def train_flags(model: str, data: Path, seq_len: int, micro: int, checkpointing: bool, out: Path,
                ds_config: str = "zero3_offload") -> list[str]:
    return ["--model", model, "--dataset", str(data), "--format", "text", "--ds_config", ds_config,
            "--method", "rep", "--seq_len", str(seq_len), "--micro_batch_size", str(micro),
            "--max_steps", str(RSS_STEP), "--save_every", "0", "--eval_every", "0", "--eval_batches", "1",
            "--export", "false", "--seed", "0", "--gradient_checkpointing", str(checkpointing).lower(),
            "--output_dir", str(out)]


def launch(flags: list[str], processes: int, log: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    script = str(REPO / "benchmarks" / "memory_check.py")
    if processes == 1:
        command = [sys.executable, script, "probe", *flags]
    else:
        command = ["deepspeed", "--num_gpus", str(processes), "--master_port", str(free_port()), script, "probe", *flags]
    with log.open("w") as handle:
        status = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {status}; see {log}")


def predict(model: str, seq_len: int, micro: int, checkpointing: bool, processes: int,
            ds_config: str = "zero3_offload", bf16: bool | None = None) -> dict:
    """The estimator's plan for the run (the same flags and --ds_config as the trainer got)."""
    from loretta_ds.adapters.config import LorettaConfig
    from loretta_ds.estimate import estimate_from_ds_config

    e, _ = estimate_from_ds_config(model, LorettaConfig(method="rep"), ds_config, nodes=1, gpus_per_node=processes,
                                   micro_batch_size=micro, seq_len=seq_len, gradient_checkpointing=checkpointing,
                                   bf16=bf16)
    # The plan is for a GPU. With one process DeepSpeed "fetches" a weight as
    # `param.data = param.ds_tensor.data.to(current_device)` (_no_gather_coalesced,
    # deepspeed/runtime/zero/partition_parameters.py): on a GPU the host-to-device copy the plan
    # counts, on this CPU machine the offloaded partition itself, which allocates nothing. The
    # comparison here counts no gathered weights for one process; "step_gpu" keeps the GPU plan.
    gathered_here = 0 if processes == 1 else e.gathered_bytes
    return {"model_states": e.process_model_state_bytes, "weights": e.frozen_partition_bytes
            + e.trainable_partition_bytes + e.persistent_bytes, "activations": e.activation_bytes,
            "gathered": gathered_here, "step": e.activation_bytes + gathered_here,
            "step_gpu": e.activation_bytes + e.gathered_bytes,
            "micro_batch_size": e.setup.micro_batch_size, "bf16": e.setup.bf16, "offload": e.setup.offload,
            "max_live_parameters": e.setup.max_live_parameters}


# (model, seq_len, micro batch, processes, ds_config): every row runs without and with checkpointing.
MAX_LIVE = 10_000_000  # a cap below the hidden-768 model's 29.9M partitioned parameters
# The two capped configs: the prefetch cap alone (the reuse distance, 1e9, still keeps every weight),
# and the prefetch cap with the reuse distance at the same value (only the last layer is kept).
CAPPED = {f"max_live_{MAX_LIVE}": {"stage3_max_live_parameters": MAX_LIVE},
          f"capped_{MAX_LIVE}": {"stage3_max_live_parameters": MAX_LIVE, "stage3_max_reuse_distance": MAX_LIVE}}
MATRIX = [(model, seq, micro, nproc, "zero3_offload")
          for model, seqs, micro in (("tiny-llama", (128, 512), 2), ("h768", (256, 1024), 1))
          for seq in seqs for nproc in (1, 2)] + [("h768", 256, 1, 2, name) for name in CAPPED]
BF16_ACTIVATIONS = [("h768", 256, 1), ("h768", 1024, 1)]  # activations alone, in bf16 too (no trainer run)
# Beyond the main matrix: another shape (hidden 512, 8 layers, twice the layers of h768) and another
# batch (2 x 512), each with and without checkpointing, on 2 processes (where the gathered weights count).
HELDOUT = [("h512x8", 512, 2, 2, "zero3_offload"), ("h512x8", 512, 2, 2, f"max_live_{MAX_LIVE}"),
           ("h768", 512, 2, 2, "zero3_offload")]
# Random LLaMAs with the tiny-llama tokenizer: hidden, layers, intermediate, heads.
SHAPES = {"h768": (768, 4, 2048, 12), "h512x8": (512, 8, 1376, 8)}


def capped_ds_config(base: str, name: str, path: Path) -> Path:
    """``base`` with the zero_optimization settings of CAPPED[name]: checks the plan's gathered-weights
    term where a cap, not the model's size, bounds it."""
    from loretta_ds.distributed.ds_config import load_ds_config

    config = load_ds_config(base)
    config["zero_optimization"].update(CAPPED[name])
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def run_main(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Runs, logs and the 60 MB model stay out of the checkout unless asked for.
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="memory_check-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"runs and logs in {work}", file=sys.stderr, flush=True)
    from benchmarks.harness.comm import make_model
    from loretta_ds.tiny_llama import ensure_tiny_llama

    models = {"tiny-llama": str(ensure_tiny_llama())}
    for name, (hidden, layers, intermediate, heads) in SHAPES.items():
        model_dir = work / name
        if not (model_dir / "config.json").is_file():
            make_model(str(model_dir), hidden=hidden, layers=layers, intermediate=intermediate, heads=heads)
        # tiny-llama's config (which make_model starts from) allows 512 positions; the longest run here
        # needs 1024. Rotary embeddings have no weights, so only the config changes.
        model_config = json.loads((model_dir / "config.json").read_text())
        model_config["max_position_embeddings"] = 2048
        (model_dir / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
        models[name] = str(model_dir)
    data = make_text_data(work / "long_text.jsonl")
    configs = {"zero3_offload": args.ds_config,
               **{name: str(capped_ds_config(args.ds_config, name, work / f"ds_config_{name}.json")) for name in CAPPED}}
    heldout = args.matrix == "heldout"
    matrix = HELDOUT if heldout else [row for row in MATRIX if row[1] in (128, 256)] if args.quick else MATRIX
    result = out_dir / ("memory_heldout.json" if heldout else "memory.json")
    rows, alone_rows, alone = [], [], {}
    started = time.time()
    for name, seq_len, micro, nproc, config_name in matrix:
        for checkpointing in (False, True):
            key = (name, seq_len, micro, checkpointing)
            if key not in alone:
                alone[key] = activation_peak(models[name], "rep", seq_len, micro, checkpointing)
            tag = "" if config_name == "zero3_offload" else f"-{config_name}"
            run_dir = work / f"{name}-seq{seq_len}-{'ckpt' if checkpointing else 'plain'}-{nproc}p{tag}"
            done = all((run_dir / f"memory_rank{r}.json").is_file() for r in range(nproc))
            if not (args.reuse and done):
                shutil.rmtree(run_dir, ignore_errors=True)
                print(f"== {run_dir.name}", file=sys.stderr, flush=True)
                launch(train_flags(models[name], data, seq_len, micro, checkpointing, run_dir, configs[config_name]),
                       nproc, work / f"{run_dir.name}.log")
            ranks = [json.loads((run_dir / f"memory_rank{r}.json").read_text()) for r in range(nproc)]
            rows.append({"model": name, "seq_len": seq_len, "micro_batch_size": micro, "checkpointing": checkpointing,
                         "processes": nproc, "ds_config": config_name, "ds_config_file": configs[config_name],
                         "predicted": predict(models[name], seq_len, micro, checkpointing, nproc, configs[config_name]),
                         "activations_alone": alone[key], "ranks": ranks})
            result.write_text(json.dumps({"runs": rows, "activations": alone_rows}, indent=2) + "\n")
    for (name, seq_len, micro, checkpointing), measured in alone.items():
        alone_rows.append({"model": name, "seq_len": seq_len, "micro_batch_size": micro, "checkpointing": checkpointing,
                           "bf16": False, "measured": measured,
                           "predicted": predict(models[name], seq_len, micro, checkpointing, 1, bf16=False)})
    for name, seq_len, micro in ([] if args.quick or heldout else BF16_ACTIVATIONS):
        for checkpointing in (False, True):
            alone_rows.append({"model": name, "seq_len": seq_len, "micro_batch_size": micro,
                               "checkpointing": checkpointing, "bf16": True,
                               "measured": activation_peak(models[name], "rep", seq_len, micro, checkpointing, bf16=True),
                               "predicted": predict(models[name], seq_len, micro, checkpointing, 1, bf16=True)})
    result.write_text(json.dumps({"runs": rows, "activations": alone_rows}, indent=2) + "\n")
    command = (f"python benchmarks/memory_check.py run --out_dir {args.out_dir} --ds_config {args.ds_config}"
               + (" --quick" if args.quick else "") + (" --matrix heldout" if heldout else ""))
    text = table(rows, alone_rows, command, time.time() - started)
    result.with_suffix(".md").write_text(text)
    print(text)
    return 0


CONFIG_LABEL = {f"max_live_{MAX_LIVE}": f", max live {MAX_LIVE:.0e}",
                f"capped_{MAX_LIVE}": f", max live and reuse distance {MAX_LIVE:.0e}"}


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def _error(measured: float, predicted: float) -> str:
    """The plan's error relative to the measurement; beyond the 25% target it is marked."""
    if not measured:
        return "-"
    error = predicted / measured - 1
    return f"{error:+.0%}" + (" (miss)" if abs(error) > 0.25 else "")


def table(rows: list[dict], alone_rows: list[dict], command: str, seconds: float) -> str:
    """The markdown tables of docs/benchmarks.md section 3 (MiB per rank; the largest of the ranks)."""
    lines = [f"`{command}` ({seconds / 60:.0f} min; ZeRO-3 + CPU offload, fp32, LoRETTA_rep with norms; "
             "MiB per rank, the larger of the ranks; error = plan / measured - 1, target within 25%)", "",
             "| model | micro x seq | ckpt | procs | step peak: plan (activations + gathered; gathered 0 for one "
             "process on CPU) | measured | error "
             "| weights: plan | measured (model load) | error | model states: plan | measured (RssAnon after step 4) "
             "| error | peak RSS in a step |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, ranks = r["predicted"], r["ranks"]
        step = max(rank["step_peak_measured"] for rank in ranks)
        weights = max(rank["rss_anon_after_model"] - rank["rss_anon_before_model"] for rank in ranks)
        states = max(rank["model_states_measured"] for rank in ranks)
        peak_rss = max(rank["rss_step_peak"] for rank in ranks)
        model = r["model"] + CONFIG_LABEL.get(r["ds_config"], "")
        lines.append(f"| {model} | {r['micro_batch_size']}x{r['seq_len']} | {'on' if r['checkpointing'] else 'off'} "
                     f"| {r['processes']} | {_mib(p['activations'])} + {_mib(p['gathered'])} = {_mib(p['step'])} "
                     f"| {_mib(step)} | {_error(step, p['step'])} | {_mib(p['weights'])} | {_mib(weights)} "
                     f"| {_error(weights, p['weights'])} | {_mib(p['model_states'])} | {_mib(states)} "
                     f"| {_error(states, p['model_states'])} | {_mib(peak_rss)} |")
    lines += ["", "Activations alone (one process, no DeepSpeed; MiB):", "",
              "| model | micro x seq | dtype | ckpt | plan | measured peak | error | saved for backward |",
              "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in alone_rows:
        p, m = r["predicted"], r["measured"]
        saved = _mib(m["saved_for_backward"]) if "saved_for_backward" in m else "-"
        lines.append(f"| {r['model']} | {r['micro_batch_size']}x{r['seq_len']} | {'bf16' if r['bf16'] else 'fp32'} "
                     f"| {'on' if r['checkpointing'] else 'off'} | {_mib(p['activations'])} | {_mib(m['peak'])} "
                     f"| {_error(m['peak'], p['activations'])} | {saved} |")
    return "\n".join(lines) + "\n"


def table_main(args: argparse.Namespace) -> int:
    """Rebuild memory.md from memory.json, planning every row again with the current estimator (the
    measurements do not change; the plan may)."""
    out_dir, work = Path(args.out_dir), Path(args.work)
    result = out_dir / ("memory_heldout.json" if args.matrix == "heldout" else "memory.json")
    data = json.loads(result.read_text())
    from loretta_ds.tiny_llama import ensure_tiny_llama

    models = {"tiny-llama": str(ensure_tiny_llama()), **{name: str(work / name) for name in SHAPES}}
    configs = {"zero3_offload": args.ds_config, **{name: str(work / f"ds_config_{name}.json") for name in CAPPED}}
    for r in data["runs"]:
        r["predicted"] = predict(models[r["model"]], r["seq_len"], r["micro_batch_size"], r["checkpointing"],
                                 r["processes"], configs[r["ds_config"]])
    for r in data["activations"]:
        r["predicted"] = predict(models[r["model"]], r["seq_len"], r["micro_batch_size"], r["checkpointing"], 1,
                                 bf16=r["bf16"])
    result.write_text(json.dumps(data, indent=2) + "\n")
    text = table(data["runs"], data["activations"], args.command, args.minutes * 60)
    result.with_suffix(".md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    # The deepspeed launcher puts --local_rank=N first; the rank comes from the environment.
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local_rank")]
    if argv and argv[0] == "probe":
        return probe_main(argv[1:])
    parser = argparse.ArgumentParser(prog="benchmarks/memory_check.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="the whole comparison (runs the trainer 20 times; --quick: 12)")
    run.add_argument("--out_dir", default="benchmarks/results/memory")
    run.add_argument("--work", default=None, help="runs and logs (default: a new temporary directory)")
    run.add_argument("--ds_config", default="zero3_offload",
                     help="the DeepSpeed config of every run (a shipped name or a file; default zero3_offload)")
    run.add_argument("--quick", action="store_true", help="the shortest --seq_len of each model only")
    run.add_argument("--matrix", choices=("main", "heldout"), default="main",
                     help="main: the 20 runs of docs/benchmarks.md 3.1; heldout: 6 more on another shape and batch "
                          "(writes memory_heldout.json/.md)")
    run.add_argument("--reuse", action="store_true",
                     help="keep the runs already finished in WORK (an interrupted comparison continues)")
    sub.add_parser("probe", help="the trainer with the memory probe (takes `loretta-ds train` flags)")
    again = sub.add_parser("table", help="plan the stored measurements again (after an estimator change)")
    again.add_argument("--out_dir", default="benchmarks/results/memory")
    again.add_argument("--work", required=True, help="the run's WORK directory (its model and ds_config)")
    again.add_argument("--ds_config", default="zero3_offload", help="the --ds_config the runs had")
    again.add_argument("--command", default="python benchmarks/memory_check.py run", help="for the table's title")
    again.add_argument("--minutes", type=float, default=0, help="the runs' wall time, for the table's title")
    again.add_argument("--matrix", choices=("main", "heldout"), default="main", help="which stored runs")
    args = parser.parse_args(argv)
    return table_main(args) if args.action == "table" else run_main(args)


if __name__ == "__main__":
    sys.exit(main())
