"""The PEFT tuner of LoRETTA (``PeftModel.base_model``): finds the targets, builds the layers.

Targets, TT modes and adapter positions come from the project's own planner
(loretta_ds.adapters.injection.plan_injection), so a PEFT-wrapped model is adapted exactly where
``loretta_ds.inject`` adapts it, and every check (unknown target, tied lm_head, bad tt_shapes
override) runs before the model changes. With ``train_norms`` every norm becomes one of PEFT's
``modules_to_save``: trained, saved with the adapter, and per adapter.
"""
from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from ...adapters.config import DEFAULT_TARGETS, NOT_MERGEABLE
from ...adapters.injection import is_norm, plan_injection
from ...adapters.layers import linear_shape
from .layers import AdpLinear, LorettaLayer, RepLinear


def _base_modules(model: nn.Module):
    """(name, module) of the model as it was before any adapter: a tuner layer or a
    modules_to_save wrapper stands for the module it wraps, and what is inside it is skipped."""
    wrappers: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in wrappers):
            continue
        if isinstance(module, BaseTunerLayer):
            wrappers.append(name + ".")
            yield name, module.get_base_layer()
        elif isinstance(module, AuxiliaryTrainingWrapper):
            wrappers.append(name + ".")
            yield name, module.original_module
        else:
            yield name, module


class LorettaModel(BaseTuner):
    """Adds LoRETTA_rep or LoRETTA_adp adapters (one method per model, as PEFT requires) to a model."""

    prefix = "loretta_"
    tuner_layer_cls = LorettaLayer
    # Configs resolve their targets themselves (LorettaConfig's defaults); this is what PEFT shows.
    target_module_mapping = {"llama": DEFAULT_TARGETS["rep"]}

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        config = self.peft_config[adapter_name]
        base_modules = dict(_base_modules(model))
        # raises before anything changes
        plan = plan_injection(model, config.to_loretta(), named_modules=base_modules.items())
        self._plans = {**getattr(self, "_plans", {}), adapter_name: {item.name: item for item in plan}}
        config.target_shapes = {item.name: list(linear_shape(item.module)) for item in plan}
        if config.train_norms:
            norms = [name for name, module in base_modules.items() if name and is_norm(module)]
            config.modules_to_save = sorted(set(config.modules_to_save or []) | set(norms))
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _create_and_replace(self, peft_config, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, parameter_name: str | None = None) -> None:
        item = self._plans[adapter_name].get(current_key)
        if item is None:  # PEFT matched a module the planner did not (a non-linear module of that name)
            return
        if isinstance(target, LorettaLayer):
            target.update_layer(adapter_name, peft_config, item.modes)
            return
        if peft_config.method == "rep":
            layer = RepLinear(target, adapter_name, peft_config, item.modes)
        else:
            layer = AdpLinear(target, adapter_name, peft_config, item.modes, item.position)
        if adapter_name not in self.active_adapters:
            layer.requires_grad_(False)  # an added adapter stays frozen until it is set active
        self._replace_module(parent, target_name, layer, target)

    def _check_merge_allowed(self) -> None:
        if any(config.method != "rep" for config in self.peft_config.values()):
            raise ValueError(NOT_MERGEABLE)
        super()._check_merge_allowed()
