"""`loretta-ds generate`: try a fine-tune in one command -- text from a run (base + its adapter) or
from a model directory (a merged export, any HF checkpoint), greedy or sampled, through the
tokenizer's chat template when it has one.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..run.directory import RUN_CONFIG, RunDir, read_run_record

CHAT_CHOICES = ("auto", "true", "false")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="RUN_OR_MODEL_DIR",
                        help="a training OUTPUT_DIR (the base model with the run's adapter) or a Hugging Face "
                             "model directory (e.g. a merged export)")
    parser.add_argument("--prompt", action="append", required=True,
                        help="the user message (repeat for several prompts)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    parser.add_argument("--sample", action="store_true",
                        help="sample (with --temperature and --top_p) instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    parser.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    parser.add_argument("--chat", default="auto", choices=CHAT_CHOICES,
                        help="wrap the prompt in the tokenizer's chat template: auto (when it has one, default), "
                             "true (required), false (raw prompt)")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help="the base model of a run directory (default: the run's 'model')")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")


def check_settings(max_new_tokens: int, sample: bool, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be at least 1, got {max_new_tokens}")
    # NaN compares False with everything: "not (x > 0)" catches it where "x <= 0" would not.
    if sample and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"--temperature must be > 0 when sampling, got {temperature}; or drop --sample for greedy")
    if sample and not (0 < top_p <= 1):
        raise ValueError(f"--top_p must be in (0, 1], got {top_p}")


def load_for_generation(path: str | Path, base: str | None = None):
    """(model in eval mode, tokenizer, description) for a run directory or a model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass a training OUTPUT_DIR or a model directory")
    run = RunDir(path)
    if (path / "config.json").is_file() and not run.run_config.is_file():
        _check_weights(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return model.eval(), tokenizer, f"model {path}"
    record = read_run_record(path)
    if record is None:
        raise FileNotFoundError(f"{path} has neither config.json (a model) nor {RUN_CONFIG} (a run); "
                                "pass a training OUTPUT_DIR or a Hugging Face model directory")
    from ..export.sources import resolve_base
    from ..quantization import QuantSpec, load_quantized, spec_from_settings

    if record.method == "lora":
        from peft import PeftModel

        if not (base or record.model):
            raise ValueError(f"{run.run_config} names no base model; pass --base MODEL")
        base_dir = resolve_base(base or record.model, path)
        _check_weights(base_dir)
        spec = spec_from_settings(record.train, record.dtype == "bfloat16")
        base_model = (load_quantized(base_dir, spec) if spec is not None
                      else AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32))
        model = PeftModel.from_pretrained(base_model, run.adapter)
        tokenizer = _with_trained_template(AutoTokenizer.from_pretrained(base_dir), run.adapter)
        return model.eval(), tokenizer, f"{base_dir} + LoRA {run.adapter}"
    from ..adapters import load_adapter
    from ..export.sources import resolve_source

    source = resolve_source(run_dir=path, base=base)
    base_dir = source.base_dir()
    _check_weights(base_dir)
    spec = QuantSpec.from_dict(source.meta.get("base_quantization"))
    # A run on a 4-bit base generates on that base, as it trained and evaluated.
    model = (load_quantized(base_dir, spec) if spec is not None
             else AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32))
    load_adapter(model, source.adapter_dir)
    description = f"{base_dir} + LoRETTA_{source.config.method} {source.adapter_dir}"
    tokenizer = _with_trained_template(AutoTokenizer.from_pretrained(base_dir), source.adapter_dir)
    return model.eval(), tokenizer, description


def _check_weights(model_dir: Path) -> None:
    """Refuse a model whose weights miss (or add) a tensor of its config before loading it."""
    from ..models import check_weights_match, resolve_model

    path, config = resolve_model(str(model_dir), weights=True)
    check_weights_match(path, config)


def _with_trained_template(tokenizer, adapter_dir: Path):
    """The tokenizer with the chat template the run trained with (adapter/chat_template.jinja,
    which the merged and PEFT exports carry too), so a run and its exports answer alike."""
    from ..adapters.io import CHAT_TEMPLATE_NAME

    template = Path(adapter_dir) / CHAT_TEMPLATE_NAME
    if template.is_file():
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    return tokenizer


def prompt_ids(tokenizer, prompt: str, chat: str = "auto") -> list[int]:
    """Token ids of ``prompt``: through the chat template (with the assistant turn opened) when
    ``chat`` is "true", or "auto" and the tokenizer has one; else the raw text with the
    tokenizer's own special tokens (bos where it adds one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat == "true" and not has_template:
        raise ValueError("--chat true, but this tokenizer has no chat template; use --chat false or auto")
    if has_template and chat != "false":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        # The template writes its own special tokens (bos included where the family uses one).
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def check_positions(model, encoded: list[list[int]], max_new_tokens: int) -> None:
    """Refuse, before generating anything, a prompt whose tokens and the new ones would run past the
    model's positions (rotary positions beyond those it was trained on give garbage, silently)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    for index, ids in enumerate(encoded):
        if len(ids) + max_new_tokens > limit:
            room = limit - len(ids)
            fix = (f"lower --max_new_tokens to {room} or shorten the prompt" if room > 0
                   else f"shorten the prompt to fewer than {limit} tokens")
            raise ValueError(f"prompt {index + 1} is {len(ids)} tokens; with --max_new_tokens {max_new_tokens} that "
                             f"runs past the model's {limit} positions (max_position_embeddings): {fix}")


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, chat: str = "auto") -> list[str]:
    """The completion of each prompt (one at a time: no padding, so nothing depends on batching)."""
    import torch

    from ..generation import generation_config

    check_settings(max_new_tokens, sample, temperature, top_p)
    encoded = [prompt_ids(tokenizer, prompt, chat) for prompt in prompts]
    check_positions(model, encoded, max_new_tokens)
    config = generation_config(model, tokenizer, max_new_tokens, sample, temperature, top_p)
    texts = []
    for index, ids in enumerate(encoded):
        torch.manual_seed(seed + index)
        ids = torch.tensor([ids])
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        texts.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def run(args: argparse.Namespace) -> int:
    check_settings(args.max_new_tokens, args.sample, args.temperature, args.top_p)
    model, tokenizer, description = load_for_generation(args.path, args.base)
    texts = generate(model, tokenizer, args.prompt, args.max_new_tokens, args.sample, args.temperature,
                     args.top_p, args.seed, args.chat)
    if not args.json:
        print(f"# {description}, {'sampling' if args.sample else 'greedy'}", flush=True)
    for prompt, text in zip(args.prompt, texts):
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": text}), flush=True)
        else:
            print(f"\n>>> {prompt}\n{text}", flush=True)
    return 0
