"""Evaluation during training: the eval loss (the training objective, over the eval split sharded
over the ranks), label-word accuracy for classification data, and greedy generation samples.

Every function is a collective: every rank calls it and runs the same number of forwards. They
take the DeepSpeed engine and the run's plan (train_plan.Plan) and return a metrics.jsonl record.
"""
from __future__ import annotations

import math

import torch

from .data.batches import eval_batches, target_count
from .data.evaluation import generation_prompts, sharded_label_word_hits
from .distributed import engine as dist
from .generation import generation_config
from .loss import token_loss_sum


@torch.no_grad()
def evaluate(engine, plan, classification_records, eval_batch_limit: int | None, rank: int, world_size: int,
             step: int) -> dict:
    """Eval loss and perplexity on the eval split (sharded over ranks); accuracy by label-word
    likelihood for classification data (``classification_records``, None otherwise)."""
    data, device = plan.data, dist.device()
    engine.eval()
    loss_sum, token_count = 0.0, 0
    batches = eval_batches(data.eval, plan.micro_batch_size, data.pad_id, rank, world_size)
    for index, batch in enumerate(batches):
        if eval_batch_limit is not None and index >= eval_batch_limit:
            break
        loss_sum += token_loss_sum(engine, batch, device).item()
        token_count += target_count(batch)
    correct = counted = 0
    if classification_records is not None:
        limit = None if eval_batch_limit is None else eval_batch_limit * plan.micro_batch_size * world_size
        correct, counted = sharded_label_word_hits(engine, plan.tokenizer, classification_records, data.label_words,
                                                   data.seq_len, 2 * plan.micro_batch_size, rank, world_size, limit)
    loss_sum, token_count, correct, counted = dist.sum_over_ranks([loss_sum, token_count, correct, counted])
    engine.train()
    mean = loss_sum / max(token_count, 1)
    record = {"kind": "eval", "step": step, "loss": mean, "perplexity": math.exp(min(mean, 50.0))}
    if counted:
        record["accuracy"] = correct / counted
    return record


@torch.no_grad()
def sample_generations(engine, plan, count: int, world_size: int, step: int) -> dict:
    """Greedy completions of the first ``count`` eval prompts (--eval_generate), beside their
    references (the way a fine-tune is checked by eye). Every rank generates the same ones: under
    ZeRO-3 each forward is a collective, so all ranks step together (synced_gpus)."""
    tokenizer, device = plan.tokenizer, dist.device()
    model = engine.module
    model.eval()
    samples = []
    for prompt, reference in generation_prompts(plan.data.eval, count):
        ids = torch.tensor([prompt], device=device)
        config = generation_config(model, tokenizer, max_new_tokens=min(64, len(reference) + 16))
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                synced_gpus=plan.zero3 and world_size > 1,
                                use_cache=not plan.cfg.gradient_checkpointing)
        samples.append({"prompt": tokenizer.decode(prompt, skip_special_tokens=True),
                        "prompt_ids": prompt, "max_new_tokens": config.max_new_tokens,
                        "reference": tokenizer.decode(reference, skip_special_tokens=True),
                        "output": tokenizer.decode(output[0, len(prompt):].tolist(), skip_special_tokens=True)})
    engine.train()
    return {"kind": "generation", "step": step, "samples": samples}


def describe_eval(record: dict) -> str:
    text = f"eval step {record['step']}: loss {record['loss']:.4f}, perplexity {record['perplexity']:.2f}"
    if "accuracy" in record:
        text += f", accuracy {record['accuracy']:.3f}"
    return text
