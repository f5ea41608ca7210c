"""PEFT config classes of LoRETTA_rep and LoRETTA_adp: PEFT's fields plus every LorettaConfig field.

The LoRETTA fields are inherited from ``LorettaConfig`` (same names, defaults, help and
validation, declared once in loretta_ds.adapters.config); ``method`` is fixed by the class.
Creating a config registers the methods with PEFT (once), so ``get_peft_model(model, config)``
works right after it.

An ``adapter_config.json`` written by this project's ``save_adapter`` (a ``loretta`` section under
a PEFT header) is read too: ``PeftModel.from_pretrained`` loads what ``loretta-ds train`` wrote.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from peft import PeftConfig

from ...adapters.config import LorettaConfig
from ...adapters.io import PEFT_TYPES
from .registry import register_methods

# The sections of this project's adapter_config.json that are not config fields.
_PROJECT_SECTIONS = ("loretta", "base", "format_version")


@dataclass
class _LorettaPeftConfig(PeftConfig, LorettaConfig):
    """A LoRETTA adapter as a PEFT config (see LorettaConfig for the LoRETTA fields).

    modules_to_save: extra modules trained fully and saved (PEFT's meaning). With train_norms the
        tuner adds every norm of the model here when it injects the adapter: the norms are then
        trained as per-adapter copies, so disable_adapter and other adapters see the base norms.
    target_shapes: {module: [out_features, in_features]} of every adapted module, recorded when the
        adapter is injected (not a setting): ``loretta-ds export`` cuts the saved cores with it.
    """

    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "modules besides the adapters to train and save (norms are added "
                                        "when train_norms)"})
    target_shapes: Optional[dict[str, list[int]]] = field(
        default=None, metadata={"help": "recorded at injection: {module: [out_features, in_features]}"})

    method_of_class: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.method != self.method_of_class:
            raise ValueError(f"{type(self).__name__} is LoRETTA_{self.method_of_class}, got method={self.method!r}; "
                             "use LorettaRepConfig for rep and LorettaAdpConfig for adp")
        LorettaConfig.__post_init__(self)
        PeftConfig.__post_init__(self)
        if self.peft_type not in (None, PEFT_TYPES[self.method]):
            raise ValueError(f"peft_type {self.peft_type!r} does not fit {type(self).__name__} "
                             f"(expected {PEFT_TYPES[self.method]})")
        self.peft_type = PEFT_TYPES[self.method]
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        register()

    def to_loretta(self) -> LorettaConfig:
        """The plain LorettaConfig of this adapter (what inject, save_adapter and the exports take)."""
        return LorettaConfig(**{f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(LorettaConfig)})

    @classmethod
    def check_kwargs(cls, **kwargs):
        """Called by ``from_pretrained`` on the file's keys: a file written by ``save_adapter`` keeps
        the LoRETTA fields in its ``loretta`` section; lift them to the top, drop the other sections."""
        section = kwargs.get("loretta")
        if isinstance(section, dict):
            kwargs = {key: value for key, value in kwargs.items() if key not in _PROJECT_SECTIONS}
            kwargs.update(section)
        return super().check_kwargs(**kwargs)


@dataclass
class LorettaRepConfig(_LorettaPeftConfig):
    """LoRETTA_rep as a PEFT method: a rank-r LoRA update whose two factors are tensor trains.

    Mergeable (``merge_and_unload``). Fields and defaults: those of LorettaConfig (r=8,
    tensor_rank=5, alpha=16, target_modules q_proj,v_proj, train_norms=True, ...).
    """

    method: str = "rep"
    method_of_class: ClassVar[str] = "rep"


@dataclass
class LorettaAdpConfig(_LorettaPeftConfig):
    """LoRETTA_adp as a PEFT method: TT bottleneck adapters around the MLP projections.

    Not mergeable (nonlinear). Fields and defaults: those of LorettaConfig (bottleneck=64,
    tensor_rank=5, activation relu, target_modules gate_proj,up_proj,down_proj, ...).
    """

    method: str = "adp"
    method_of_class: ClassVar[str] = "adp"


CONFIG_CLASSES = {"rep": LorettaRepConfig, "adp": LorettaAdpConfig}


def config_for(loretta: LorettaConfig, **peft_fields) -> _LorettaPeftConfig:
    """The PEFT config of a plain LorettaConfig (e.g. one read from a training run), with
    ``peft_fields`` (task_type, inference_mode, ...) on top."""
    values = {f.name: copy.deepcopy(getattr(loretta, f.name)) for f in dataclasses.fields(LorettaConfig)}
    return CONFIG_CLASSES[loretta.method](**values, **peft_fields)


def register() -> None:
    """Make LoRETTA_rep and LoRETTA_adp PEFT methods (explicit; idempotent: a second call changes
    nothing). ValueError for an unsupported peft, or if another class holds one of the names."""
    from .tuner import LorettaModel  # the tuner's modules never import this one

    register_methods(CONFIG_CLASSES, LorettaModel)
