"""Export a trained LoRETTA adapter: merged Hugging Face checkpoint, PEFT LoRA, or the adapter itself.

    from loretta_ds.export import export_merged
    export_merged("runs/llama70b", "runs/llama70b/merged", dtype="bfloat16")

merged (LoRETTA_rep): streams the base checkpoint from disk in row blocks, adds
(alpha/r) (A B)^T computed from the adapter's TT cores (no model is built), replaces trained
norms, and writes safetensors shards + index, config, generation config and tokenizer files.
Memory stays at a few tens of MB plus the adapter, whatever the model size; no GPU, no deepspeed.
peft-lora (rep): lora_A = A^T, lora_B = B^T, norms as modules_to_save. adapter (rep, adp): the
adapter and its run config. Every format writes into ``<OUT_DIR>.export-incomplete`` and renames
it into place when complete.

Modules: sources (run dir, adapter, base lookup), checkpoint (base index and reads),
safetensors_stream (header-first streaming writer), updates (TT cores -> dense factors),
merged / lora (the formats), staging (temporary dir, publish), verify (logit comparison), api.
"""
from .api import (FORMATS, ExportResult, export, export_adapter, export_lora, export_merged,
                  export_run_merged, parse_dtype)
from .merged import parse_size
from .sources import resolve_base, resolve_source
from .staging import TEMP_SUFFIX
from .verify import VerifyReport

__all__ = ["export", "export_merged", "export_run_merged", "export_lora", "export_adapter", "ExportResult", "FORMATS",
           "parse_dtype", "parse_size", "resolve_base", "resolve_source", "TEMP_SUFFIX",
           "VerifyReport"]
