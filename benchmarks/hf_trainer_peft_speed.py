"""Step time of HF Trainer + PEFT-LoRETTA rep against HF Trainer + stock PEFT LoRA, one process.

Same model, same tokenized data (loretta_ds's own preparation, as benchmarks/hf_trainer_lora.py),
same batches (right-padded micro batches), same r / alpha / targets; the methods alternate (ABBA
order per repeat) in one process, so a machine shared with other work slows both alike. Each
repeat builds a fresh model and Trainer and times --steps optimizer steps; the first
--warmup of each are dropped. Prints one JSON object: per-method median step time and the ratio.

On a machine shared with other work, wall time per step moves with the load (it moved 8x within
one repeat here). `--clock cpu --threads 1` times each step by the process's own CPU time instead:
one thread does the whole step, so the CPU seconds it spends are the step's work, whatever else runs
(other programs slow it only through shared caches and memory bandwidth).

    python benchmarks/hf_trainer_peft_speed.py --model DIR --repeats 3 --steps 8 --out result.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's loretta_ds

import torch  # noqa: E402

from benchmarks.hf_trainer_lora import PaddingCollator  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="bundled:chat")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps timed per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each repeat left out")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each method (ABBA order)")
    parser.add_argument("--methods", default="lora,rep")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--target_modules", default="q_proj,v_proj")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time per step; cpu: the process's CPU time per step (use with "
                             "--threads 1 on a shared machine)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    return parser.parse_args(argv)


def peft_config(method: str, args: argparse.Namespace):
    targets = args.target_modules.split(",")
    if method == "lora":
        from peft import LoraConfig

        return LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=targets)
    from loretta_ds.integrations.peft import LorettaRepConfig

    return LorettaRepConfig(r=args.r, alpha=args.alpha, task_type="CAUSAL_LM", target_modules=targets)


def time_one(method: str, args, train, pad_id: int, workdir: str) -> list[float]:
    """Step times (s) of one fresh HF Trainer run of ``method``."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, peft_config(method, args))
    times: list[float] = []
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = clock()

        def on_step_end(self, *_, **__):
            times.append(clock() - self.started)

    training_args = TrainingArguments(
        output_dir=workdir, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=1e-3,
        logging_steps=10**9, save_strategy="no", report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
        seed=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=PaddingCollator(pad_id),
                      callbacks=[StepTimer()])
    trainer.train()
    return times[args.warmup:]


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
    steps: dict[str, list[float]] = {m: [] for m in methods}
    order = []
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for method in (methods if repeat % 2 == 0 else methods[::-1]):  # ABBA: neither always goes first
                order.append(method)
                steps[method] += time_one(method, args, train, pad_id_of(tokenizer), workdir)
                print(f"repeat {repeat} {method}: median {statistics.median(steps[method]):.4f} s/step ({args.clock}) so far",
                      flush=True)
    medians = {m: statistics.median(t) for m, t in steps.items()}
    result = {"model": args.model, "seq_len": args.seq_len, "batch": args.batch, "steps_per_repeat": args.steps,
              "warmup_dropped": args.warmup, "repeats": args.repeats, "order": order, "threads": torch.get_num_threads(),
              "clock": args.clock,
              "median_step_s": medians, "step_s": steps,
              "ratio": {m: medians[m] / medians[methods[0]] for m in methods}}
    print(json.dumps({k: result[k] for k in ("median_step_s", "ratio", "order")}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
