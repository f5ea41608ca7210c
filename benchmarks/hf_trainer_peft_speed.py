"""Step time of HF Trainer + PEFT-LoRETTA rep against HF Trainer + stock PEFT LoRA, one process.

Same model, same tokenized data (loretta_ds's own preparation, as benchmarks/hf_trainer_lora.py),
same batches (right-padded micro batches), same r / alpha / targets. Methods (``--methods``):
``lora``, ``rep`` (its defaults: the norms trained as PEFT modules_to_save), ``rep_nonorm``
(train_norms=False: the same trainable set as LoRA) and ``lora_norms`` (LoRA with every norm in
modules_to_save: the same trainable set as rep's defaults). Prints one JSON object; ratios are
against the first method.

``--interleave step`` (default): every method gets its own model and Trainer, each Trainer runs in
its own thread, and a baton lets exactly one of them run an optimizer step at a time, round by
round (ABBA: the order reverses every round), so step k of every method sees the same batch and
nearly the same machine. The figure is the median over rounds of the per-round ratio, with its
spread. ``--interleave repeat``: a fresh model and Trainer per repeat, the methods alternating
whole repeats (ABBA), ratio of the per-method medians.

On a machine shared with other work, wall time per step moves with the load (it moved 8x within
one repeat here). ``--clock cpu --threads 1`` times each step by the CPU time of the thread that
runs it: one thread does the whole step (torch's intra-op pool at 1, autograd's CPU backward in
the calling thread), so the CPU seconds it spends are the step's work, whatever else runs (other
programs still slow it through shared caches and memory bandwidth, which the round-by-round
pairing shares between the methods). Pinning the process to one core (``taskset -c 1``) keeps
the methods on the same core's caches.

    taskset -c 1 python benchmarks/hf_trainer_peft_speed.py --model DIR --threads 1 --clock cpu \
        --methods lora,rep,rep_nonorm,lora_norms --steps 24 --warmup 2 --out result.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's loretta_ds

import torch  # noqa: E402

from transformers import TrainerCallback  # noqa: E402

from benchmarks.hf_trainer_lora import PaddingCollator  # noqa: E402

METHODS = ("lora", "rep", "rep_nonorm", "lora_norms")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="bundled:chat")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per Trainer run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run left out")
    parser.add_argument("--interleave", choices=("step", "repeat"), default="step",
                        help="step: all methods' Trainers at once, one step each per round (ABBA); "
                             "repeat: one fresh Trainer per repeat, whole repeats alternating (ABBA)")
    parser.add_argument("--repeats", type=int, default=3, help="--interleave repeat: runs of each method")
    parser.add_argument("--methods", default="lora,rep", help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--target_modules", default="q_proj,v_proj")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time per step; cpu: the CPU time of the thread running the step "
                             "(use with --threads 1 on a shared machine)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    if args.warmup >= args.steps:
        parser.error(f"--warmup {args.warmup} leaves none of --steps {args.steps} timed")
    return args


def norm_names(model) -> list[str]:
    """The module names (last component) of the model's norms: what rep's train_norms trains."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if "norm" in type(module).__name__.lower()})


def peft_config(method: str, args: argparse.Namespace, model):
    targets = args.target_modules.split(",")
    if method.startswith("lora"):
        from peft import LoraConfig

        saved = norm_names(model) if method == "lora_norms" else None
        return LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=targets, modules_to_save=saved)
    from loretta_ds.integrations.peft import LorettaRepConfig

    return LorettaRepConfig(r=args.r, alpha=args.alpha, task_type="CAUSAL_LM", target_modules=targets,
                            train_norms=method == "rep")


def build_trainer(method: str, args, train, pad_id: int, workdir: str, callback):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, peft_config(method, args, model))
    training_args = TrainingArguments(
        output_dir=f"{workdir}/{method}", max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=1e-3, logging_steps=10**9, save_strategy="no", report_to=[], dataloader_num_workers=0,
        remove_unused_columns=False, seed=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    return Trainer(model=model, args=training_args, train_dataset=train, data_collator=PaddingCollator(pad_id),
                   callbacks=[callback])


def step_clock(args):
    # thread_time: the CPU time of the calling thread, the one that runs the whole step at --threads 1
    return time.thread_time if args.clock == "cpu" else time.perf_counter


class StepTimer(TrainerCallback):
    """Records each step's time; ``gate`` (optional) is told when a step starts and ends, and may
    block to wait for its turn."""

    def __init__(self, clock, gate=None, method=None):
        self.clock, self.gate, self.method, self.times = clock, gate, method, []

    def on_step_begin(self, *_, **__):
        if self.gate:
            self.gate.acquire(self.method)
        self.started = self.clock()

    def on_step_end(self, *_, **__):
        self.times.append(self.clock() - self.started)
        if self.gate:
            self.gate.release(self.method)


class Baton:
    """One optimizer step at a time, in rounds: every method once per round, the order reversed on
    odd rounds (ABBA). A method that failed lets the others go on without it."""

    def __init__(self, methods: list[str]):
        self.methods, self.round, self.turn = methods, 0, 0
        self.done: set[str] = set()
        self.cond = threading.Condition()

    def _order(self) -> list[str]:
        return self.methods if self.round % 2 == 0 else self.methods[::-1]

    def _current(self) -> str | None:
        order = self._order()
        return order[self.turn] if self.turn < len(order) else None

    def _advance(self) -> None:
        """Move the turn past finished methods, into the next round after the last one."""
        while len(self.done) < len(self.methods):
            while self.turn < len(self.methods) and self._order()[self.turn] in self.done:
                self.turn += 1
            if self.turn < len(self.methods):
                return
            print(f"round {self.round} done", flush=True)
            self.round, self.turn = self.round + 1, 0

    def acquire(self, method: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self._current() == method)

    def release(self, method: str) -> None:
        with self.cond:
            self.turn += 1
            self._advance()
            self.cond.notify_all()

    def finish(self, method: str) -> None:
        with self.cond:
            self.done.add(method)  # also passes the turn on if it failed holding it
            self._advance()
            self.cond.notify_all()


def run_interleaved(methods, args, train, pad_id, workdir) -> dict[str, list[float]]:
    baton = Baton(methods)
    timers = {m: StepTimer(step_clock(args), baton, m) for m in methods}
    trainers = {m: build_trainer(m, args, train, pad_id, workdir, timers[m]) for m in methods}  # one at a time
    errors: dict[str, BaseException] = {}

    def train_one(method):
        try:
            trainers[method].train()
        except BaseException as error:  # reported after the others finish
            errors[method] = error
        finally:
            baton.finish(method)

    threads = [threading.Thread(target=train_one, args=(m,), name=m) for m in methods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        method, error = next(iter(errors.items()))
        raise RuntimeError(f"{method} failed: {error!r}") from error
    return {m: timers[m].times[args.warmup:] for m in methods}


def run_repeats(methods, args, train, pad_id, workdir) -> tuple[dict[str, list[float]], list[str]]:
    steps: dict[str, list[float]] = {m: [] for m in methods}
    order = []
    for repeat in range(args.repeats):
        for method in (methods if repeat % 2 == 0 else methods[::-1]):  # ABBA: neither always goes first
            order.append(method)
            timer = StepTimer(step_clock(args))
            build_trainer(method, args, train, pad_id, workdir, timer).train()
            steps[method] += timer.times[args.warmup:]
            print(f"repeat {repeat} {method}: median {statistics.median(steps[method]):.4f} s/step ({args.clock}) "
                  "so far", flush=True)
    return steps, order


def spread(values: list[float]) -> dict:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2],
            "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from loretta_ds.data.prepare import prepare_data
    from loretta_ds.data.tokenization import pad_id_of

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train = prepare_data(tokenizer, [args.dataset], "auto", args.seq_len, seed=0).train
    train = train.select_columns(["input_ids", "labels"])
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as workdir:
        if args.interleave == "step":
            steps, order = run_interleaved(methods, args, train, pad_id_of(tokenizer), workdir), None
        else:
            steps, order = run_repeats(methods, args, train, pad_id_of(tokenizer), workdir)
    base = methods[0]
    result = {"model": args.model, "seq_len": args.seq_len, "batch": args.batch, "steps": args.steps,
              "warmup_dropped": args.warmup, "interleave": args.interleave, "threads": torch.get_num_threads(),
              "clock": args.clock, "median_step_s": {m: statistics.median(t) for m, t in steps.items()},
              "step_s": steps}
    if order:
        result.update(repeats=args.repeats, order=order,
                      ratio={m: result["median_step_s"][m] / result["median_step_s"][base] for m in methods})
    else:  # paired by round: the ratio of each round, and their spread
        result["ratio_per_round"] = {m: spread([t / b for t, b in zip(steps[m], steps[base])]) for m in methods[1:]}
        result["ratio"] = {m: result["ratio_per_round"][m]["median"] for m in methods[1:]}
    print(json.dumps({k: result[k] for k in ("median_step_s", "ratio") + (("ratio_per_round",) if not order else ())}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
