"""Model configs by name: LLaMA-2 presets with their real shapes, HF config files, meta-device models."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from .file_io import read_json
from .tiny_llama import TINY_LLAMA_NAME as BUILTIN_MODEL  # built on this machine on first use

_LLAMA2_COMMON = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      hidden_act="silu", tie_word_embeddings=False)
# Shapes of the released LLaMA-2 checkpoints (70B uses grouped-query attention with 8 KV heads).
LLAMA2_PRESETS = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8),
}


def llama2_config(name: str, **overrides) -> LlamaConfig:
    """The HF config of a LLaMA-2 preset (``overrides``: e.g. fewer layers for a width-exact slice)."""
    return LlamaConfig(**{**_LLAMA2_COMMON, **LLAMA2_PRESETS[name], **overrides})


# Decoder families whose layers carry the LLaMA projection names (q/k/v/o_proj, gate/up/down_proj)
# that the adapters and the --target_modules presets use. SmolLM/SmolLM2 and LLaMA-3 are "llama";
# Qwen2's q/k/v biases stay in the frozen base layer (merged exports copy them unchanged).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
FAMILY_NAMES = "LLaMA-2/3, SmolLM/SmolLM2, Mistral, Qwen2"


def check_model_type(config: PretrainedConfig) -> None:
    """Refuse, with the supported list, a model family whose module layout the adapters do not know."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not supported; supported model types: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)} ({FAMILY_NAMES})")
    quantized = getattr(config, "quantization_config", None)
    if quantized:
        method = quantized.get("quant_method") if isinstance(quantized, dict) else getattr(quantized, "quant_method", None)
        raise ValueError(f"the model's config.json has a quantization_config (quant_method {str(method)!r}): "
                         "pre-quantized checkpoints are not supported (the adapter is trained on, merged into and "
                         "exported with the original weights); train on the original, unquantized checkpoint, "
                         "with --load_in_4bit to hold its frozen weights in 4 bits (NF4)")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    rope_type = (rope.get("rope_type") or rope.get("type") or "default") if isinstance(rope, dict) else "default"
    if rope_type not in ("default", *ROPE_INIT_FUNCTIONS):
        raise ValueError(f"the model's config.json names the rope type {rope_type!r} (rope_scaling), which this "
                         f"transformers version does not know ({', '.join(['default', *sorted(ROPE_INIT_FUNCTIONS)])}); "
                         "correct config.json, or upgrade transformers if the model needs a newer one")


def resolve_model(name: str, *, weights: bool) -> tuple[str | None, PretrainedConfig]:
    """(the path or hub id to load weights from, the model's HF config) for every command's --model.

    Accepts the built-in ``tiny-llama`` (built and cached on first use), a model directory, a hub id
    in the local cache, and, where only shapes are needed (``weights=False``: count, estimate), a
    LLaMA-2 preset name or a bare config.json; then the path is None for presets and config files.
    """
    if name == BUILTIN_MODEL:
        from .tiny_llama import ensure_tiny_llama

        path = str(ensure_tiny_llama())
        return path, AutoConfig.from_pretrained(path)
    if name in LLAMA2_PRESETS:
        if weights:
            raise ValueError(f"--model {name} is a preset: its shapes, no weights; pass the directory of the "
                             "downloaded checkpoint (config.json, weights, tokenizer)")
        return None, llama2_config(name)
    local = Path(name).expanduser()
    if local.exists():
        local = local.resolve()
        config_file = local / "config.json" if local.is_dir() else local
        if local.is_dir() and not config_file.is_file():
            raise FileNotFoundError(f"model directory {local} has no config.json; pass a Hugging Face model "
                                    "directory (config.json, weights, tokenizer)")
        if weights and not local.is_dir():
            raise ValueError(f"--model {local} is a config file; training needs the model directory that "
                             "holds it with the weights and the tokenizer")
        config = _config_from_file(config_file)
        return (str(local) if local.is_dir() else None), config
    return name, _config_from_hub(name, weights)


def _config_from_file(path: Path) -> PretrainedConfig:
    data = read_json(path, "model config", "pass a Hugging Face config.json")
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{path} has no 'model_type'; it is not a Hugging Face model config")
    try:
        return AutoConfig.for_model(**data)
    except Exception as err:  # noqa: BLE001 - transformers' validators raise several kinds
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"{path} is not a valid {data.get('model_type')} config ({reason}); correct it "
                         "(for example, num_attention_heads must divide hidden_size)") from None


def _config_from_hub(name: str, weights: bool) -> PretrainedConfig:
    """A hub id, from the local Hugging Face cache (the hub itself may be unreachable)."""
    choices = ("a local model directory" if weights else
               f"a preset ({', '.join(LLAMA2_PRESETS)}), a config file, a model directory")
    # A mistyped preset or built-in name (no namespace, close to one of ours) is no hub id: asking the
    # hub for it first would spend ~25 s of retries on an offline machine before the same error.
    close = difflib.get_close_matches(name, [*LLAMA2_PRESETS, BUILTIN_MODEL], n=1, cutoff=0.75)
    if "/" not in name and close:
        raise FileNotFoundError(f"model {name!r} is neither {choices} nor a hub id; did you mean {close[0]}?")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"model {name!r} is neither {choices} nor a hub model available here "
                                f"({str(err).splitlines()[0]}); pass a directory with config.json, "
                                f"or {BUILTIN_MODEL} for the built-in model") from None


def load_model_config(name: str) -> PretrainedConfig:
    """The HF config of --model for the commands that need shapes only (count, estimate)."""
    return resolve_model(name, weights=False)[1]


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The causal-LM model of ``config`` on the meta device: real shapes, no memory, seconds for 70B."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)



# Tensors a checkpoint may hold that no parameter takes, which from_pretrained drops by design
# (older LLaMA conversions saved the rotary inverse frequencies).
_IGNORED_EXTRA = (re.compile(r"rotary_emb\.inv_freq$"),)


def check_weights_match(model_dir: str | Path | None, config: PretrainedConfig) -> None:
    """Refuse a model directory whose weights are not exactly the parameters its config.json builds,
    read from the safetensors headers (or the .bin index) alone, before a weight loads.

    from_pretrained only warns about a missing tensor and initialises it at random (training then
    runs on a damaged model, exports carry the hole on, and "greedy" generation changes run to run),
    and it drops extra ones silently (a config with fewer layers than the weights).
    """
    from .export.base_weights import open_base_checkpoint

    if model_dir is None or not Path(model_dir).is_dir():
        return  # a hub id: transformers reads (and checks) its cached files
    present = {name: tuple(info.shape) for name, info in open_base_checkpoint(model_dir).tensors.items()}
    model = meta_model(config)
    required = {name: tuple(param.shape) for name, param in model.named_parameters()}
    # state_dict() also names a tied weight under each of its names, and the persistent buffers.
    allowed = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    ignored = [re.compile(pattern) for pattern in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    missing = sorted(set(required) - set(present))
    extra = sorted(name for name in present if name not in allowed
                   and not any(pattern.search(name) for pattern in (*_IGNORED_EXTRA, *ignored)))
    wrong = sorted(f"{name} {list(present[name])} (the config makes {list(allowed[name])})"
                   for name in present if name in allowed and present[name] != allowed[name])
    problems = []
    for what, names in (("missing from the weights", missing), ("in the weights but not in the model", extra),
                        ("of another shape", wrong)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{len(names)} tensor(s) {what}: {shown}")
    if problems:
        raise ValueError(f"the model in {model_dir} does not match its config.json "
                         f"({config.num_hidden_layers} layers, hidden size {config.hidden_size}): "
                         f"{'; '.join(problems)}. Loading it would start those weights at random; "
                         "re-download or re-convert the model, or correct config.json")
