"""The contenders: how each one is built from the shared base model and how it computes a loss.

Every builder takes a private deep copy of the base, so all contenders start from identical
frozen weights. ``train_norms`` (LoRETTA and the dense adapter) adds the norm weights to the
trainable set, as the paper counts them; LoRA and the reference package never train norms, so
without it every contender trains exactly its adapter tensors (the like-for-like speed test). Settings follow the paper: rep r=8, tensor_rank 5, alpha 16 on q_proj,v_proj;
adp bottleneck 64, tensor_rank 5 on the MLP; LoRA r=8, alpha 16 on q_proj,v_proj. Dropout is 0
everywhere, so no contender pays for a mask the others do not draw.
"""
from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .baselines import add_dense_adapters, add_plain_lora


@dataclass
class Contender:
    name: str
    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    # The floor feeds embeddings that require grad (so backward reaches the inputs with every
    # parameter frozen); everyone else feeds token ids.
    feeds_embeddings: bool = False
    attn: str = ""

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        if self.feeds_embeddings:
            embeds = self.model.get_input_embeddings()(ids).detach().requires_grad_(True)
            return self.model(inputs_embeds=embeds, labels=ids).loss
        return self.model(input_ids=ids, labels=ids).loss

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


class ContenderUnavailable(Exception):
    """A contender's package is missing; the run goes on without it and says why."""


def _floor(base: nn.Module, train_norms: bool) -> tuple[nn.Module, str]:
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    return model, "floor (frozen, grad to inputs)"


def _loretta(method: str) -> Callable[[nn.Module, bool], tuple[nn.Module, str]]:
    def build(base: nn.Module, train_norms: bool) -> tuple[nn.Module, str]:
        from loretta_ds.adapters import LorettaConfig, inject
        cfg = LorettaConfig(method=method, r=8, tensor_rank=5, alpha=16, bottleneck=64, dropout=0.0,
                            train_norms=train_norms)
        model = inject(copy.deepcopy(base), cfg)
        norms = " + norms" if train_norms else ""
        return model, f"LoRETTA_{method}{norms} (loretta_ds)"
    return build


def _lora(base: nn.Module, train_norms: bool) -> tuple[nn.Module, str]:
    if importlib.util.find_spec("peft") is None:
        return add_plain_lora(copy.deepcopy(base)), "LoRA r=8 q,v (plain, PEFT absent)"
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                     task_type="CAUSAL_LM")
    return get_peft_model(copy.deepcopy(base), cfg), "LoRA r=8 q,v (PEFT)"


def _dense_adapter(base: nn.Module, train_norms: bool) -> tuple[nn.Module, str]:
    model = add_dense_adapters(copy.deepcopy(base), bottleneck=64, train_norms=train_norms)
    return model, f"dense adapter b=64{' + norms' if train_norms else ''} (Adapters)"


def _reference(method: str) -> Callable[[nn.Module, bool], tuple[nn.Module, str]]:
    def build(base: nn.Module, train_norms: bool) -> tuple[nn.Module, str]:
        # The reference marks no norm trainable on LLaMA whatever is asked (a known defect).
        if importlib.util.find_spec("loretta") is None:
            raise ContenderUnavailable("the reference package is not installed (pip install loretta==0.1.0)")
        import loretta
        if method == "rep":
            cfg = loretta.LorettaRepConfig(r=8, tensor_rank=5, lora_alpha=16, lora_dropout=0.0,
                                           target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        else:
            cfg = loretta.LorettaAdpConfig(bottleneck_size=64, non_linearity="relu", tensor_rank=5,
                                           target_modules=["gate_proj", "up_proj", "down_proj"],
                                           task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = loretta.get_peft_model(copy.deepcopy(base), cfg)
            except KeyError as err:
                # Its fixed shape table has no entry for this hidden size.
                raise ContenderUnavailable(f"the reference package has no TT shape for size {err}") from None
        return model, f"reference loretta 0.1.0 {method}"
    return build


# name -> builder(base, train_norms) -> (model, label). LoRA and the reference never train norms.
BUILDERS: dict[str, Callable[[nn.Module, bool], tuple[nn.Module, str]]] = {
    "floor": _floor,
    "rep": _loretta("rep"),
    "adp": _loretta("adp"),
    "lora": _lora,
    "adapter": _dense_adapter,
    "ref_rep": _reference("rep"),
    "ref_adp": _reference("adp"),
}


def build_contender(name: str, base: nn.Module, lr: float, train_norms: bool = True) -> Contender:
    model, label = BUILDERS[name](base, train_norms)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr) if params else None
    return Contender(name, label, model, optimizer, feeds_embeddings=(name == "floor"))
