"""Registering LoRETTA_rep and LoRETTA_adp with PEFT, explicitly and once.

``peft.register_peft_method`` accepts only names of PEFT's own ``PeftType`` enum, so this fills
what it fills, the three mappings that PEFT dispatches on (``peft.mapping``): peft_type -> config
class, -> tuner class, -> parameter prefix. ``get_peft_model``, ``PeftConfig.from_pretrained``,
``PeftModel.from_pretrained`` and the save / load code all read them, with the string peft_type.
"""
from __future__ import annotations

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .names import PEFT_TYPES, SUPPORTED_PEFT


def check_peft_version(installed: str | None = None) -> str:
    """The installed peft version; ValueError naming the supported range if it is outside it."""
    installed = installed or metadata.version("peft")
    if Version(installed) not in SpecifierSet(SUPPORTED_PEFT):
        raise ValueError(
            f"loretta_ds's PEFT integration supports peft {SUPPORTED_PEFT}; peft {installed} is installed. "
            f"Its internals (the dispatch mappings, BaseTuner's hooks) differ between releases: install a "
            f"supported one with pip install 'peft{SUPPORTED_PEFT}'")
    return installed


def register() -> None:
    """Make LoRETTA_rep and LoRETTA_adp PEFT methods. Idempotent: a second call changes nothing.

    Raises ValueError for an unsupported peft, or if another class already holds one of the names.
    """
    check_peft_version()
    from peft import mapping

    from .config import CONFIG_CLASSES
    from .tuner import LorettaModel

    wanted = {}
    for method, peft_type in PEFT_TYPES.items():
        wanted[peft_type] = ((mapping.PEFT_TYPE_TO_CONFIG_MAPPING, CONFIG_CLASSES[method]),
                             (mapping.PEFT_TYPE_TO_TUNER_MAPPING, LorettaModel),
                             (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, LorettaModel.prefix))
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
