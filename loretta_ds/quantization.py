"""A 4-bit frozen base (QLoRA-style): bitsandbytes NF4/FP4 weights under the TT adapters.

The base model's linear layers (every nn.Linear but the output head) are loaded through
transformers' ``BitsAndBytesConfig`` as bitsandbytes ``Linear4bit``: 4-bit codes in blocks of 64
weights, each block scaled by its absolute maximum (absmax); with double quantization the absmax
values are themselves quantized to 8 bits in blocks of 256. The quantized weights are frozen; the
TT cores are created in float32 (loretta_ds.adapters.layers) and trained as on a full-precision
base; embeddings and norms stay in the run's precision.

The packed codes are stored in a float tensor of the run's precision (``bnb_4bit_quant_storage``):
ZeRO-3 partitions and gathers them like any other weight, and DeepSpeed's cast of every
parameter to bf16 in a bf16 run leaves them untouched (a float32 storage would be cast and
destroyed). The compute dtype (the dtype the weights are dequantized to for each matmul) is the
run's precision unless ``--bnb_4bit_compute_dtype`` says otherwise.

bitsandbytes is the optional extra ``qlora``; nothing here imports it until a model is quantized
or dequantized, so counts and memory plans of 4-bit models work without it; nor torch at import
(the run config, read by every command's --help, imports the settings' names from here).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

EXTRA = "qlora"
INSTALL = f'pip install "loretta_ds[{EXTRA}]"'
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
# bitsandbytes' 4-bit layout (Params4bit defaults, which transformers' loader keeps): 64 weights per
# absmax block; with double quantization, 256 absmax values per block of the second quantization.
BLOCK_SIZE = 64
NESTED_BLOCK_SIZE = 256


def _dtype(name: str):
    import torch

    return getattr(torch, name)


class MissingQuantizationExtra(ValueError):
    """--load_in_4bit without bitsandbytes installed (a user error: the command says how to fix it)."""


def require_bitsandbytes() -> None:
    """Refuse a 4-bit run before anything loads when bitsandbytes is missing (or cannot be imported
    here), naming the extra."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingQuantizationExtra(
            f"--load_in_4bit needs bitsandbytes, which is not installed: install the optional extra "
            f"'{EXTRA}' ({INSTALL}, or pip install -e \".[{EXTRA}]\" in a checkout), or train without "
            "--load_in_4bit") from None


@dataclass(frozen=True)
class QuantSpec:
    """How the frozen base was quantized: what a run records and what an export reproduces.

    weight_dtype: the dtype the checkpoint's weights were cast to before quantization (the run's
    precision; it is also the packed codes' storage dtype). compute_dtype: the matmul dtype.
    """

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    weight_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"unknown bnb_4bit_quant_type {self.quant_type!r}: use one of {', '.join(QUANT_TYPES)}")
        for name in ("compute_dtype", "weight_dtype"):
            if getattr(self, name) not in COMPUTE_DTYPES:
                raise ValueError(f"{name} must be one of {', '.join(COMPUTE_DTYPES)}, got {getattr(self, name)!r}")

    @classmethod
    def for_run(cls, quant_type: str, double_quant: bool, compute_dtype: str | None, bf16: bool) -> "QuantSpec":
        weight = "bfloat16" if bf16 else "float32"
        return cls(quant_type, bool(double_quant), compute_dtype or weight, weight)

    @classmethod
    def from_dict(cls, data: dict | None) -> "QuantSpec | None":
        """From ``to_dict`` or ``base_record``'s record (which also lists the quantized weights)."""
        if not data:
            return None
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def storage_dtype(self):
        return _dtype(self.weight_dtype)

    def bnb_config(self):
        """transformers' BitsAndBytesConfig for from_pretrained."""
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=_dtype(self.compute_dtype),
                                  bnb_4bit_quant_storage=self.storage_dtype)

    def describe(self) -> str:
        return (f"4-bit {self.quant_type.upper()} base ({'double quantization, ' if self.double_quant else ''}"
                f"compute {self.compute_dtype}, storage {self.weight_dtype})")

    def roundtrip(self, weight):
        """``weight`` quantized as the loader quantizes it and dequantized again (float32): the
        weight the 4-bit model computes with. The loader casts to the run's precision first."""
        import bitsandbytes.functional as bnbf
        import torch

        source = weight.to(self.storage_dtype).contiguous()
        codes, state = bnbf.quantize_4bit(source, blocksize=BLOCK_SIZE, compress_statistics=self.double_quant,
                                          quant_type=self.quant_type, quant_storage=self.storage_dtype)
        return bnbf.dequantize_4bit(codes, state).to(torch.float32)


def load_quantized(model_dir, spec: QuantSpec, float32: bool = False):
    """The 4-bit model of ``model_dir`` as ``spec`` quantized it for training. ``float32``: compute
    in float32 and keep the unquantized weights in float32 (the codes are the same: they come from
    the weights cast to ``spec.weight_dtype``), to compare with a float32 export."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    require_bitsandbytes()
    load_spec = dataclasses.replace(spec, compute_dtype="float32") if float32 else spec
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(spec.weight_dtype),
                                                 quantization_config=load_spec.bnb_config())
    if float32:
        for param in model.parameters():
            if not is_quantized(param) and param.is_floating_point():
                param.data = param.data.to(torch.float32)
    return model


def base_record(model, spec: QuantSpec) -> dict:
    """What an adapter trained on this 4-bit model records of its base: the spec and the names of
    the weights the loader quantized (an export dequantizes exactly those)."""
    return {**spec.to_dict(), "weights": sorted(name for name, param in model.named_parameters() if is_quantized(param))}


def recorded_weights(record: dict) -> set[str]:
    """The quantized weights' names of a ``base_record``."""
    return set(record.get("weights") or ())


def release_checkpoint_mapping(model) -> None:
    """Give the tensors a 4-bit load left unquantized (embeddings, norms, head, buffers) memory of
    their own. transformers loads a checkpoint already in the run's dtype by mapping its
    safetensors file and pointing those tensors into the mapping; the quantization has read every
    page of the file, so while one tensor points into it the whole file stays resident in this
    process (SmolLM2-135M in float32: 503 MiB, more than the 4-bit model itself)."""
    for param in model.parameters():
        if not is_quantized(param):
            param.data = param.data.clone()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.clone()


def spec_from_settings(train: dict | None, bf16: bool) -> QuantSpec | None:
    """The QuantSpec of a run's settings (TrainConfig.flat() or run_config.json's "train")."""
    if not train or not train.get("load_in_4bit"):
        return None
    return QuantSpec.for_run(train.get("bnb_4bit_quant_type", "nf4"), train.get("bnb_4bit_use_double_quant", True),
                             train.get("bnb_4bit_compute_dtype"), bf16)


def is_quantized(param) -> bool:
    """Whether a parameter holds bitsandbytes 4-bit codes (its shape is not the weight's)."""
    return param is not None and type(param).__name__ == "Params4bit"


def is_quantized_model(model) -> bool:
    return any(is_quantized(p) for p in model.parameters())


def output_head(model):
    get_output = getattr(model, "get_output_embeddings", None)
    return get_output() if get_output is not None else None


def quantized_linear_names(model) -> list[str]:
    """The modules transformers' 4-bit loader turns into Linear4bit: every nn.Linear but the
    output head (a meta-device model of the same config gives the same names)."""
    from torch import nn

    head = output_head(model)
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head and not _inside_adapter(name)]


def _inside_adapter(name: str) -> bool:
    return ".loretta_" in name or ".lora_" in name


def quantized_bytes(numel: int, double_quant: bool = True) -> int:
    """Bytes one 4-bit weight of ``numel`` elements takes: the packed codes (half a byte each) and
    the block scales: float32 absmax per 64 weights, or with double quantization one byte per 64
    weights plus a float32 scale per 256 of those bytes and the per-tensor offset and code table."""
    blocks = math.ceil(numel / BLOCK_SIZE)
    scales = blocks + 4 * math.ceil(blocks / NESTED_BLOCK_SIZE) + 4 + 256 * 4 if double_quant else 4 * blocks
    return math.ceil(numel / 2) + scales + 16 * 4  # + the 16-entry 4-bit code table


def bytes_per_parameter(double_quant: bool = True) -> float:
    """Bytes per weight of a large 4-bit weight (0.5159 with double quantization, 0.5625 without)."""
    return 0.5 + (1 / BLOCK_SIZE + 4 / (BLOCK_SIZE * NESTED_BLOCK_SIZE) if double_quant else 4 / BLOCK_SIZE)


def packed_numel(numel: int, storage_bytes: int) -> int:
    """Elements of the storage tensor that holds ``numel`` 4-bit codes (what ZeRO-3 partitions)."""
    return math.ceil(numel / 2 / storage_bytes)


def dequantized_weight(param):
    """The float32 weight a Linear4bit computes with."""
    import bitsandbytes.functional as bnbf
    import torch

    return bnbf.dequantize_4bit(param.data, param.quant_state).to(torch.float32)


def state_bytes(param) -> int:
    """Bytes a loaded 4-bit parameter holds: codes plus its quantization state's tensors."""
    import torch

    total = param.numel() * param.element_size()
    state = param.quant_state
    for tensor in (state.absmax, state.code, getattr(state, "offset", None)):
        if isinstance(tensor, torch.Tensor):
            total += tensor.numel() * tensor.element_size()
    nested = getattr(state, "state2", None)
    if nested is not None:
        for tensor in (nested.absmax, nested.code):
            total += tensor.numel() * tensor.element_size()
    return total


def pack_quantized_weights(model, storage_bytes: int, double_quant: bool = True) -> tuple[int, int]:
    """On a meta-device model: give every weight a 4-bit load quantizes its storage tensor's size
    (the packed codes, ``packed_numel`` elements of ``storage_bytes`` each: what ZeRO-3 counts,
    partitions and gathers), so that a memory plan counts them as it counts any weight. Returns
    (the bytes of the block scales, which stay whole on every process: they are not parameters;
    the weights of the largest quantized layer, dequantized in full for its matmul)."""
    import torch
    from torch import nn

    scale_bytes = largest = 0
    for name in quantized_linear_names(model):
        module = model.get_submodule(name)
        numel = module.weight.numel()
        scale_bytes += quantized_bytes(numel, double_quant) - math.ceil(numel / 2)
        largest = max(largest, numel)
        packed = torch.empty(packed_numel(numel, storage_bytes), 1, device="meta")
        module.weight = nn.Parameter(packed, requires_grad=False)
    return scale_bytes, largest
