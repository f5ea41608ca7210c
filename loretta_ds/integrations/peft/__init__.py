"""LoRETTA_rep and LoRETTA_adp as PEFT methods (HF Trainer, TRL's SFTTrainer, accelerate).

    import loretta_ds
    from peft import get_peft_model
    model = get_peft_model(model, loretta_ds.LorettaRepConfig(task_type="CAUSAL_LM"))

Creating a config registers the methods; ``register_peft()`` does it explicitly (needed before
``PeftModel.from_pretrained`` in a process that has created no config). Names are imported on
first use: ``names`` (what save_adapter writes) needs neither peft nor torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "config": ("LorettaRepConfig", "LorettaAdpConfig", "config_for"),
    "registry": ("register", "is_registered", "check_peft_version"),
    "tuner": ("LorettaModel",),
    "layers": ("RepLinear", "AdpLinear", "LorettaLayer"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
