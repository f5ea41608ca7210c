"""Registering LoRETTA_rep and LoRETTA_adp with PEFT, explicitly and once (``config.register``
passes the classes; this module fills PEFT's tables and checks the peft version).

``peft.register_peft_method`` accepts only names of PEFT's own ``PeftType`` enum, so this fills
what it fills, the three mappings that PEFT dispatches on (``peft.mapping``): peft_type -> config
class, -> tuner class, -> parameter prefix. ``get_peft_model``, ``PeftConfig.from_pretrained``,
``PeftModel.from_pretrained`` and the save / load code all read them, with the string peft_type.
"""
from __future__ import annotations

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ...adapters.io import PEFT_TYPES

# The releases whose internals (the three dispatch mappings, BaseTuner's hooks, the state-dict
# key rules) the integration was written and tested against; pyproject.toml bounds peft alike.
SUPPORTED_PEFT = ">=0.21.2,<0.22"


def check_peft_version(installed: str | None = None) -> str:
    """The installed peft version; ValueError naming the supported range if it is outside it."""
    installed = installed or metadata.version("peft")
    if Version(installed) not in SpecifierSet(SUPPORTED_PEFT):
        raise ValueError(
            f"loretta_ds's PEFT integration supports peft {SUPPORTED_PEFT}; peft {installed} is installed. "
            f"Its internals (the dispatch mappings, BaseTuner's hooks) differ between releases: install a "
            f"supported one with pip install 'peft{SUPPORTED_PEFT}'")
    return installed


def register_methods(config_classes: dict, tuner_cls) -> None:
    """Put ``config_classes`` ({method: config class}) and ``tuner_cls`` into PEFT's mappings under
    PEFT_TYPES[method]. Idempotent; a conflict (another class under one of the names) raises
    ValueError and leaves the mappings as they were."""
    check_peft_version()
    from peft import mapping

    wanted = {}
    for method, peft_type in PEFT_TYPES.items():
        wanted[peft_type] = ((mapping.PEFT_TYPE_TO_CONFIG_MAPPING, config_classes[method]),
                             (mapping.PEFT_TYPE_TO_TUNER_MAPPING, tuner_cls),
                             (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, tuner_cls.prefix))
    # Check every entry first, so a conflict leaves PEFT's mappings as they were.
    for peft_type, entries in wanted.items():
        for table, value in entries:
            present = table.get(peft_type)
            if present is not None and present != value:
                raise ValueError(f"PEFT already has a method {peft_type!r} ({present!r}), not loretta_ds's "
                                 f"{value!r}: two copies of loretta_ds (or another package) register it")
    for peft_type, entries in wanted.items():
        for table, value in entries:
            table[peft_type] = value


def is_registered() -> bool:
    from peft import mapping

    return all(peft_type in mapping.PEFT_TYPE_TO_TUNER_MAPPING for peft_type in PEFT_TYPES.values())
