"""`loretta-ds count`: trainable vs total parameters, on a meta-device model (seconds for 70B)."""
from __future__ import annotations

import argparse

from ..adapters.config import METHODS, LorettaConfig
from ..run_config import add_adapter_arguments, add_train_settings, adapter_settings_from_args, train_settings_from_args

# The training settings count and estimate take (declared once, in run_config.TrainConfig).
MODEL_SETTINGS = ("model", "method")


def add_loretta_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --method and the adapter's settings, as train declares them (one help text and one
    default each), for count and estimate."""
    add_train_settings(parser, MODEL_SETTINGS)
    add_adapter_arguments(parser, suppress_defaults=False)


def loretta_config_from_args(args: argparse.Namespace) -> LorettaConfig:
    method = train_settings_from_args(args, ("method",))["method"]
    if method not in METHODS:
        raise ValueError(f"--method {method} is the LoRA baseline (PEFT's own count); count and estimate cover the "
                         f"LoRETTA methods: use one of {', '.join(METHODS)}")
    return adapter_settings_from_args(args).loretta(method)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_loretta_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..adapters import count_parameters, inject, trainable_parameter_names
    from ..models import load_model_config, meta_model

    cfg = loretta_config_from_args(args)
    model = meta_model(load_model_config(args.model))
    _, base_total = count_parameters(model)
    inject(model, cfg)
    trainable, total = count_parameters(model)
    params = dict(model.named_parameters())
    # Trained norms are base weights that train: they count as trainable, never as frozen.
    norms = sum(params[n].numel() for n in trainable_parameter_names(model) if "loretta_" not in n)
    adapter = trainable - norms
    frozen = total - trainable
    shape = f"r {cfg.r}" if cfg.method == "rep" else f"bottleneck {cfg.bottleneck}"
    print(f"model {args.model}: LoRETTA_{cfg.method} on {','.join(cfg.target_modules)} "
          f"(tensor_rank {cfg.tensor_rank}, {shape})")
    print(f"  adapter parameters   {adapter:>15,}  (new TT cores{' and biases' if cfg.method == 'adp' else ''})")
    print(f"  trained norm weights {norms:>15,}  (of the base model; --train_norms {str(cfg.train_norms).lower()})")
    print(f"  trainable            {trainable:>15,}  ({100 * trainable / total:.4f}% of the total)")
    print(f"  frozen               {frozen:>15,}  (base weights that do not train)")
    print(f"  total                {total:>15,}  (base model {base_total:,} + adapter {adapter:,})")
    return 0
