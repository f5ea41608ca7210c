"""What the PEFT integration is called and which peft releases it supports.

Imports neither peft nor torch: ``save_adapter`` writes these names into every adapter directory,
so that ``peft.PeftModel.from_pretrained`` can load what ``loretta-ds train`` wrote.
"""
from __future__ import annotations

# PEFT dispatches on the config's ``peft_type`` string; these are ours (not members of PEFT's
# PeftType enum, which only PEFT itself can extend).
PEFT_TYPES = {"rep": "LORETTA_REP", "adp": "LORETTA_ADP"}
METHOD_OF_PEFT_TYPE = {peft_type: method for method, peft_type in PEFT_TYPES.items()}
# The releases whose internals (the three dispatch mappings, BaseTuner's hooks, the state-dict
# key rules) the integration was written and tested against; pyproject.toml bounds peft alike.
SUPPORTED_PEFT = ">=0.21.2,<0.22"
TESTED_PEFT = ("0.21.2",)
# A PeftModel names every parameter of the wrapped model with this prefix, and so do the keys
# of the adapter_model.safetensors that PeftModel.save_pretrained writes.
PEFT_KEY_PREFIX = "base_model.model."
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def peft_header(method: str, base_model_name_or_path: str | None) -> dict:
    """The keys a PEFT reader needs at the top of a LoRETTA ``adapter_config.json``."""
    return {"peft_type": PEFT_TYPES[method], "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path}
