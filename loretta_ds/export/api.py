"""Export entry points: validate everything, then write into a staged directory and publish it.

Each format follows the same order: resolve the sources (adapter, run config, base), check the
output directory and every shape, and only then create files, so a user error never leaves
anything behind. Nothing here imports deepspeed or needs a GPU.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..adapters.io import CHAT_TEMPLATE_NAME, CONFIG_NAME, WEIGHTS_NAME, read_adapter_tensors
from ..adapters.peft_export import PEFT_WEIGHTS
from ..quantization import QuantSpec, recorded_weights, require_bitsandbytes
from .base_weights import BaseCheckpoint, open_base_checkpoint
from .lora import write_lora
from .merged import (DEFAULT_MAX_SHARD_SIZE, parse_size, plan_merged, read_base_config, write_merged,
                     write_model_files)
from ..run.directory import RUN_CONFIG, RunDir, RunRecord, write_run_record
from .provenance import PROVENANCE_NAME, foreign_files, write_provenance
from .rounding import UpdateRounding
from .sources import ExportSource, resolve_source
from .staging import MARKER_NAME, StagedOutput
from ..adapters.config import check_mergeable
from .updates import norm_tensors, rep_updates
from .verify import VerifyReport, verify_export

FORMATS = ("merged", "peft-lora", "adapter")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# Room left on the disk beyond the export itself (config, tokenizer, filesystem slack): a tenth of
# the export, at least 64 KiB and at most 256 MiB, so a 14 KB adapter does not need a quarter GB.
DISK_MARGIN_MIN_BYTES = 64 << 10
DISK_MARGIN_MAX_BYTES = 256 << 20


def disk_margin(nbytes: int) -> int:
    return min(DISK_MARGIN_MAX_BYTES, max(DISK_MARGIN_MIN_BYTES, nbytes // 10))


def human_bytes(n: float) -> str:
    """1.5 GB, 14.0 KB, ...: decimal units, as df -H and the messages of pip print them."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass
class ExportResult:
    """What an export wrote: the directory, its files, and the --verify report if requested."""

    out_dir: Path
    format: str
    files: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None / "auto" keep the base's dtype; otherwise float32, bfloat16, float16 (or fp32/bf16/fp16)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() == "auto":
        return None
    try:
        return DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto (same as the base), float32, bfloat16 or float16") from None


def _check_disk(staged: StagedOutput, nbytes: int) -> None:
    free, margin = staged.free_bytes(), disk_margin(nbytes)
    if free < nbytes + margin:
        raise ValueError(f"the export needs {human_bytes(nbytes)} (and {human_bytes(margin)} to spare) but "
                         f"{staged.out_dir.parent} has {human_bytes(free)} free; free some space or choose "
                         "another OUT_DIR")


def _provenance(source: ExportSource, fmt: str, dtype: torch.dtype | None, base_dir: Path | None) -> dict:
    from .. import __version__

    return {"format": fmt, "base_model": source.base_name,
            "base_dir": str(base_dir) if base_dir else None,
            "adapter_dir": str(source.adapter_dir.resolve()),
            "run_dir": str(source.run_dir.resolve()) if source.run_dir else None,
            "dtype": str(dtype).removeprefix("torch.") if dtype else "same as base",
            "loretta": source.config.to_dict(), "loretta_ds_version": __version__}


def _copy_trained_template(source: ExportSource, directory: Path) -> list[str]:
    """The chat template the run trained with travels with every export (the name transformers
    and PEFT read it from), so the export answers as the run does; the names copied."""
    trained_template = source.adapter_dir / CHAT_TEMPLATE_NAME
    if not trained_template.is_file():
        return []
    shutil.copyfile(trained_template, directory / CHAT_TEMPLATE_NAME)
    return [CHAT_TEMPLATE_NAME]


def export(run_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None, *,
           format: str = "merged", adapter: str | os.PathLike | None = None, base: str | None = None,
           dtype: str | torch.dtype | None = None, max_shard_size: str | int | None = None,
           overwrite: bool = False, verify: bool = False, lora_norms: str = "keep",
           log: Callable[[str], None] = print) -> ExportResult:
    """Export a trained LoRETTA adapter to ``out_dir`` in one of FORMATS.

    run_dir: a training OUTPUT_DIR (run_config.json + adapter/); or give ``adapter`` (+ ``base``).
    base: the base model directory or hub id (overrides the run's); needed by merged and --verify.
    dtype: output dtype of floating tensors (merged, peft-lora); None / "auto" keeps the source's.
    max_shard_size: merged only, e.g. "5GB" (default), "2GiB" or a number of bytes.
    lora_norms: peft-lora only: "keep" trained norms as modules_to_save (exact with PEFT) or
        "drop" them (for vLLM / TGI, which load only lora_A / lora_B).
    verify: after writing, compare logits of base + adapter and of the export (loads full models).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if out_dir is None:
        raise ValueError("OUT_DIR is required")
    if format != "merged" and max_shard_size is not None:
        raise ValueError("--max_shard_size applies to the merged format only (adapters are small single files)")
    out_dtype = parse_dtype(dtype)
    if format == "adapter" and out_dtype is not None:
        raise ValueError("the adapter format copies the trained tensors unchanged; --dtype applies to "
                         "the merged and peft-lora formats")
    if lora_norms not in ("keep", "drop") or (format != "peft-lora" and lora_norms != "keep"):
        raise ValueError("--lora_norms is 'keep' or 'drop', and applies to the peft-lora format only")
    source = resolve_source(run_dir, adapter, base)
    if format in ("merged", "peft-lora"):
        check_mergeable(source.config.method)
    if verify:
        source.base_dir()  # --verify needs the base model: fail now, not after writing
    if source.run is not None and source.run.finished is False:
        log(f"warning: {source.run_dir}/{RUN_CONFIG} says the run has not finished; exporting the "
            f"adapter last saved in {source.adapter_dir}")

    writers = {"merged": _export_merged, "peft-lora": _export_lora, "adapter": _export_adapter}
    result = writers[format](source, Path(out_dir), out_dtype, max_shard_size, overwrite, lora_norms, log)
    if verify:
        log("verifying: loading the adapted base model and the export in float32 ...")
        export_dtype = out_dtype or _dominant_dtype(source, format)
        result.verify = verify_export(format, source.base_dir(), source.adapter_dir, result.out_dir, export_dtype,
                                      QuantSpec.from_dict(source.meta.get("base_quantization")))
        log(str(result.verify))
    return result


def _dominant_dtype(source: ExportSource, fmt: str) -> torch.dtype:
    """The dtype the export was written in when none was asked for (for --verify's tolerance)."""
    if fmt == "merged":
        checkpoint = open_base_checkpoint(source.base_dir())
        return max(((t.dtype, t.numel) for t in checkpoint.tensors.values() if t.dtype.is_floating_point),
                   key=lambda pair: pair[1])[0]
    tensors = read_adapter_tensors(source.adapter_dir)
    return next(iter(tensors.values())).dtype


def _protected(source: ExportSource, base_dir: Path | None) -> list[Path]:
    paths = [source.adapter_dir] + ([source.run_dir] if source.run_dir else [])
    return paths + ([base_dir] if base_dir else [])


def _known_base_dir(source: ExportSource) -> Path | None:
    """The base model's directory when it can be found (formats that do not read it still must
    not write into it)."""
    try:
        return source.base_dir()
    except (ValueError, FileNotFoundError):
        return None


def _export_merged(source: ExportSource, out_dir: Path, dtype, max_shard_size, overwrite, _norms, log) -> ExportResult:
    shard_limit = parse_size(max_shard_size or DEFAULT_MAX_SHARD_SIZE)
    base_dir = source.base_dir()
    staged = StagedOutput(out_dir, overwrite, _protected(source, base_dir), log, base_dir=base_dir)
    staged.check()
    config = read_base_config(base_dir)
    tensors = read_adapter_tensors(source.adapter_dir)
    updates, norms = rep_updates(source.config, source.meta, tensors), norm_tensors(tensors)
    checkpoint = open_base_checkpoint(base_dir)
    record = source.meta.get("base_quantization")
    spec = QuantSpec.from_dict(record)
    if spec is not None:
        require_bitsandbytes()  # the base is quantized here as it was for training
        log(f"the adapter trained on a {spec.describe()}: its weights are written dequantized, as the run saw them")
    quantized = (spec, recorded_weights(record)) if spec is not None else None
    plan = plan_merged(checkpoint, updates, norms, dtype, shard_limit, quantized)
    total = sum(shard.nbytes for shard in plan)
    _check_disk(staged, total)

    log(f"merging {len(updates)} LoRETTA_rep updates and {len(norms)} trained norms into {base_dir} "
        f"({checkpoint.kind}, {len(checkpoint.files)} file(s)) -> {out_dir} ({len(plan)} shard(s), {total / 1e9:.2f} GB)")
    rounding = UpdateRounding()
    with staged:
        write_merged(plan, checkpoint, staged.path, log, rounding)
        files = [shard.filename for shard in plan] + (["model.safetensors.index.json"] if len(plan) > 1 else [])
        files += write_model_files(base_dir, config, dtype, staged.path)
        files += _copy_trained_template(source, staged.path)
        provenance = {**_provenance(source, "merged", dtype, base_dir), "update_rounding": rounding.summary()}
        write_provenance(staged.path, provenance, skip=(MARKER_NAME,))
        staged.publish()
    warning = rounding.warning()
    if warning:
        log(warning)
    log(f"wrote {out_dir}: load it with AutoModelForCausalLM.from_pretrained({str(out_dir)!r})")
    return ExportResult(staged.out_dir, "merged", files + [PROVENANCE_NAME])


def _norm_drift(checkpoint: BaseCheckpoint, norms: dict[str, torch.Tensor]) -> float:
    """Max |trained - base| over the trained norm weights (reads only those, a few MB)."""
    drift = 0.0
    for name, trained in norms.items():
        info = checkpoint.tensors.get(name)
        if info is None or info.numel != trained.numel():
            return float("inf")
        with checkpoint.open_shard(info.file) as reader:
            original = reader.read_rows(info, 0, info.rows).reshape(trained.shape)
        drift = max(drift, float((trained.float() - original.float()).abs().max()))
    return drift


def _export_lora(source: ExportSource, out_dir: Path, dtype, _shards, overwrite, lora_norms, log) -> ExportResult:
    staged = StagedOutput(out_dir, overwrite, _protected(source, None), log, base_dir=_known_base_dir(source))
    staged.check()
    tensors = read_adapter_tensors(source.adapter_dir)
    updates, norms = rep_updates(source.config, source.meta, tensors), norm_tensors(tensors)
    if lora_norms == "drop" and norms:
        try:
            drift = _norm_drift(open_base_checkpoint(source.base_dir()), norms)
            detail = (f"they differ from the base's by up to {drift:.3g}"
                      + (" (unchanged: dropping them is exact)" if drift == 0 else ", so the LoRA alone is not exact"))
        except (ValueError, FileNotFoundError):
            detail = "the base model was not found to check how far they moved"
        log(f"warning: leaving out {len(norms)} trained norm weights: {detail}")
        norms = {}
    lora_bytes = sum(u.rank * (u.in_features + u.out_features) for u in updates.values()) * 4
    _check_disk(staged, lora_bytes + sum(t.numel() * t.element_size() for t in norms.values()))
    with staged:
        files = write_lora(source.config, updates, norms, source.base_name, dtype, staged.path)
        files += _copy_trained_template(source, staged.path)
        write_provenance(staged.path, _provenance(source, "peft-lora", dtype, None), skip=(MARKER_NAME,))
        staged.publish()
    log(f"wrote {out_dir}: PEFT LoRA adapter (r={source.config.r}, {len(updates)} modules, "
        f"{len(norms)} norms as modules_to_save)")
    return ExportResult(staged.out_dir, "peft-lora", files + [PROVENANCE_NAME])


def _export_adapter(source: ExportSource, out_dir: Path, _dtype, _shards, overwrite, _norms, log) -> ExportResult:
    staged = StagedOutput(out_dir, overwrite, _protected(source, None), log, base_dir=_known_base_dir(source))
    staged.check()
    tensors = read_adapter_tensors(source.adapter_dir)
    if source.config.method == "rep":
        rep_updates(source.config, source.meta, tensors)  # refuse a damaged adapter before copying it
    record = source.run or RunRecord(method=source.config.method, loretta=source.config.to_dict())
    if source.base_name and not record.model:
        record = record.replace(model=source.base_name)
    # save_adapter's files, and PEFT's where the adapter has them (then PeftModel loads the export too)
    names = [name for name in (CONFIG_NAME, WEIGHTS_NAME, PEFT_WEIGHTS) if (source.adapter_dir / name).is_file()]
    _check_disk(staged, sum((source.adapter_dir / name).stat().st_size for name in names))
    with staged:
        for name in names:
            shutil.copyfile(source.adapter_dir / name, staged.path / name)
        _copy_trained_template(source, staged.path)
        write_run_record(staged.path, record)
        write_provenance(staged.path, _provenance(source, "adapter", None, None), skip=(MARKER_NAME,))
        staged.publish()
    log(f"wrote {out_dir}: LoRETTA_{source.config.method} adapter + {RUN_CONFIG} "
        "(load with loretta_ds.load_adapter, or export it again: it is a valid RUN_DIR)")
    return ExportResult(staged.out_dir, "adapter", names + [RUN_CONFIG, PROVENANCE_NAME])


def export_merged(run_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                  **options) -> ExportResult:
    """Merged Hugging Face checkpoint of a LoRETTA_rep run (see ``export`` for the options)."""
    return export(run_dir, out_dir, format="merged", **options)


def export_lora(run_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                **options) -> ExportResult:
    """PEFT LoRA adapter of a LoRETTA_rep run (see ``export`` for the options)."""
    return export(run_dir, out_dir, format="peft-lora", **options)


def export_adapter(run_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                   **options) -> ExportResult:
    """The LoRETTA adapter and its run config, as a self-contained RUN_DIR (rep and adp)."""
    return export(run_dir, out_dir, format="adapter", **options)


def export_run_merged(run_dir: str | os.PathLike, warn: Callable[[str], None] = print) -> Path:
    """The merged export a finished rep run writes into RUN_DIR/merged at its end, replacing an
    earlier export of this project there but never a folder holding files of a user's. Returns
    the directory; ValueError / FileNotFoundError / OSError saying what went wrong and how to redo
    it (training is done and saved by then: only the export is missing, and it can be rerun alone).
    warn: receives the export's warnings (its progress lines are left out of the training log).
    """
    run = RunDir(run_dir)
    out = run.merged
    retry = f"loretta-ds export {run.root} {out}"
    if out.is_dir() and any(out.iterdir()) and foreign_files(out) != []:
        # Checked before the run too; a file put there since must not be deleted either.
        raise ValueError(f"the merged export was not written: {out} holds files that no export of this trainer "
                         f"wrote, and replacing it would delete them; move them out, then run: {retry} --overwrite")
    try:
        export_merged(run.root, out, overwrite=True,
                      log=lambda message: warn(message) if message.startswith("warning") else None)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        raise ValueError(f"the merged export failed ({err}); the trained adapter is in {run.adapter}. "
                         f"Retry with: {retry}") from None
    return out
