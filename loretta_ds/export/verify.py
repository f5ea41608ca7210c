"""--verify: run the adapted model and the exported one on the same tokens, compare logits.

This loads full models (the base twice for peft-lora), in float32 so that the difference measures
the export alone (e.g. rounding merged weights to bfloat16), not low-precision arithmetic. It is
meant for small models or machines with memory to spare (about 2 x 4 bytes per parameter).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.io import load_adapter
from ..quantization import QuantSpec, load_quantized

# Max |logit difference| allowed, relative to max |logit| of the adapted model. A broken export
# (missing norm, transposed or unscaled update) moves logits by a sizeable fraction of their range;
# rounding does not. Measured on random tiny LLaMAs with realistic updates (|Delta W| up to 2 |W|):
# float32 exports <= 5e-7 (summation order only); float16 <= 5.2e-4 and bfloat16 <= 4.8e-3, the
# rounding of each merged weight to 11 / 8 significant bits. Tolerances keep a 4-20x margin.
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@dataclass
class VerifyReport:
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (f"verify: max |logit difference| {self.max_abs_diff:.3g} (max |logit| {self.max_abs_logit:.3g}, "
                f"tolerance {self.tolerance:.3g}): {verdict}")


def sample_tokens(vocab_size: int, sequences: int = 4, length: int = 32, seed: int = 0) -> torch.Tensor:
    """Fixed random token ids (sequences, length), the same on every call."""
    return torch.randint(0, vocab_size, (sequences, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def verify_export(fmt: str, base_dir: Path, adapter_dir: Path, out_dir: Path,
                  export_dtype: torch.dtype, quantization: QuantSpec | None = None) -> VerifyReport:
    """Compare base + load_adapter(adapter_dir) with the export in out_dir (fmt: merged, peft-lora, adapter).

    quantization: the adapter trained on this 4-bit base; the reference is then the 4-bit base
    (float32 compute) + adapter, and so are the adapter formats' reloads; the merged export is a
    plain float model.
    """
    def base():
        if quantization is not None:
            return load_quantized(base_dir, quantization, float32=True).eval()
        return _load(base_dir)

    adapted = load_adapter(base(), adapter_dir).eval()
    ids = sample_tokens(adapted.config.vocab_size)
    expected = _logits(adapted, ids)
    del adapted
    if fmt == "merged":
        exported = _load(out_dir)
    elif fmt == "peft-lora":
        from peft import PeftModel

        exported = PeftModel.from_pretrained(base(), out_dir).eval()
    else:
        exported = load_adapter(base(), out_dir).eval()
    got = _logits(exported, ids)
    scale = float(expected.abs().max())
    tolerance = RELATIVE_TOLERANCE.get(export_dtype, 2e-2) * max(1.0, scale)
    return VerifyReport(float((got - expected).abs().max()), scale, tolerance)
