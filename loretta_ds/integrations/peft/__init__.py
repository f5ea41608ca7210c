"""LoRETTA_rep and LoRETTA_adp as PEFT methods (HF Trainer, TRL's SFTTrainer, accelerate).

    import loretta_ds
    from peft import get_peft_model
    model = get_peft_model(model, loretta_ds.LorettaRepConfig(task_type="CAUSAL_LM"))

Creating a config registers the methods; ``register_peft()`` does it explicitly (needed before
``PeftModel.from_pretrained`` in a process that has created no config). Names are imported on
first use. The PEFT type names an adapter directory carries are loretta_ds.adapters.io's.
"""
from __future__ import annotations

from ...lazy_names import lazy_names

_WHERE = {
    "config": ("LorettaRepConfig", "LorettaAdpConfig", "config_for", "register"),
    "registry": ("is_registered", "check_peft_version", "SUPPORTED_PEFT"),
    "tuner": ("LorettaModel",),
    "layers": ("RepLinear", "AdpLinear", "LorettaLayer"),
}
__all__, __getattr__ = lazy_names(__name__, _WHERE)
