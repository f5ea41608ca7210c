"""The stack a user would otherwise pick, for benchmarks/throughput.sh: Hugging Face `Trainer` + stock
PEFT LoRA + the same DeepSpeed config, on the same model and the same tokenized data as
loretta_ds (the examples come from loretta_ds's own data preparation, so both see identical
token ids and labels). ``--method rep`` / ``adp`` trains LoRETTA through the same stack instead
(PEFT-LoRETTA, loretta_ds.integrations.peft), for benchmarks/hf_trainer_peft.sh and the tests.

Batches are what `Trainer` users get by default: each micro batch right-padded to its longest
example. Every optimizer step appends one record to --metrics (JSON lines, rank 0), shaped like
loretta_ds's metrics.jsonl train records: step, step_time_s, real_tokens (non-pad tokens of the
global batch) and tokens_per_s, so one report reads both.

    deepspeed --num_gpus 2 --master_port P benchmarks/hf_trainer_lora.py --model DIR \
        --ds_config LORETTA_RUN/run_config.json --metrics out.jsonl --max_steps 8
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's loretta_ds

import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--ds_config", required=True,
                        help="a loretta_ds run's run_config.json (its resolved DeepSpeed config) or a DeepSpeed config")
    parser.add_argument("--dataset", default="bundled:chat")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--target_modules", default="q_proj,v_proj")  # loretta_ds's default for rep and lora
    parser.add_argument("--method", default="lora", choices=["lora", "rep", "adp"],
                        help="lora: stock PEFT LoRA; rep / adp: LoRETTA through PEFT (the other LoRETTA "
                             "settings at their defaults)")
    parser.add_argument("--save_steps", type=int, default=0,
                        help="save a checkpoint (adapter + DeepSpeed state) every N steps into --output_dir")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="resume from this checkpoint (true: the latest in --output_dir)")
    parser.add_argument("--adapter_out", default=None, help="save the trained adapter here at the end")
    parser.add_argument("--metrics", required=True, help="JSON lines, one record per optimizer step")
    parser.add_argument("--output_dir", default=None, help="Trainer's output_dir (nothing is saved)")
    parser.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    return parser.parse_args(argv)


def resolved_ds_config(path: str) -> dict:
    """The DeepSpeed config exactly as a loretta_ds run resolved it ("ds_config" of its
    run_config.json: every "auto" filled for this model, world size and batch), so both stacks run
    under the same numbers; a plain DeepSpeed config file is taken as it is."""
    data = json.loads(Path(path).read_text())
    return copy.deepcopy(data["ds_config"] if "ds_config" in data else data)


def trainer_arguments(ds_config: dict, max_steps: int, output_dir: str, save_steps: int = 0):
    """TrainingArguments that agree with every number of ``ds_config`` (HF refuses a config whose
    numbers contradict its arguments)."""
    from transformers import TrainingArguments

    scheduler = ds_config.get("scheduler", {}).get("params", {})
    return TrainingArguments(
        output_dir=output_dir, deepspeed=ds_config, max_steps=max_steps,
        per_device_train_batch_size=ds_config["train_micro_batch_size_per_gpu"],
        gradient_accumulation_steps=ds_config.get("gradient_accumulation_steps", 1),
        learning_rate=ds_config["optimizer"]["params"]["lr"],
        warmup_steps=scheduler.get("warmup_num_steps", 0), max_grad_norm=ds_config.get("gradient_clipping", 0.0),
        logging_steps=10**9, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        report_to=[], dataloader_num_workers=0,
        remove_unused_columns=False, seed=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)


class PaddingCollator:
    """Right-pads a micro batch to its longest example (labels with -100) and queues its number
    of real tokens, which the timing callback takes when the step that used it ends."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.real_tokens: deque[int] = deque()

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            mask[row, :n] = 1
        self.real_tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def step_timer(collator: PaddingCollator, metrics_path: Path, grad_accum: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step and the global batch's real tokens (summed over ranks)."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self.started
            local = sum(collator.real_tokens.popleft() for _ in range(grad_accum) if collator.real_tokens)
            total = torch.tensor([local], dtype=torch.long)
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(total)
            if state.is_world_process_zero:
                record = {"kind": "train", "step": state.global_step, "step_time_s": seconds,
                          "real_tokens": int(total), "tokens_per_s": int(total) / seconds}
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")

    return StepTimer()


def peft_config(args: argparse.Namespace):
    """The PEFT config of --method: stock LoRA, or LoRETTA_rep / _adp (r, alpha, targets as given)."""
    targets = args.target_modules.split(",")
    if args.method == "lora":
        from peft import LoraConfig

        return LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=targets)
    from loretta_ds.integrations.peft import LorettaAdpConfig, LorettaRepConfig

    if args.method == "rep":
        return LorettaRepConfig(r=args.r, alpha=args.alpha, task_type="CAUSAL_LM", target_modules=targets)
    return LorettaAdpConfig(task_type="CAUSAL_LM")


def main(argv=None) -> int:
    args = parse_args(argv)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

    from loretta_ds.data.prepare import prepare_data
    from loretta_ds.data.tokenization import pad_id_of

    metrics = Path(args.metrics)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.unlink(missing_ok=True)
    output_dir = args.output_dir or str(metrics.with_suffix(".trainer"))
    from loretta_ds.distributed.op_cache import use_environment_extension_cache

    use_environment_extension_cache()  # DeepSpeed's JIT-built ops (the CPU all-reduce): built once per venv
    if not torch.cuda.is_available():
        # On CPU, Trainer's device setup leaves the process group to DeepSpeed, whose zero.Init
        # (inside from_pretrained) would see one process: start it as loretta_ds does, with gloo.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    # TrainingArguments first: under ZeRO-3 it registers the config, so from_pretrained partitions.
    ds_config = resolved_ds_config(args.ds_config)
    training_args = trainer_arguments(ds_config, args.max_steps, output_dir, args.save_steps)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = prepare_data(tokenizer, [args.dataset], "auto", args.seq_len, seed=0)
    train = data.train.select_columns(["input_ids", "labels"])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, peft_config(args))
    collator = PaddingCollator(pad_id_of(tokenizer))
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collator,
                      callbacks=[step_timer(collator, metrics, training_args.gradient_accumulation_steps)])
    resume = {"true": True, None: None}.get(args.resume, args.resume)
    trainer.train(resume_from_checkpoint=resume)
    if args.adapter_out:
        trainer.save_model(args.adapter_out)  # under ZeRO-3 this gathers the partitioned adapter first
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"hf_trainer_lora: {args.method}, {args.max_steps} steps; per-step records in {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
