"""`loretta-ds count`: trainable vs total parameters, on a meta-device model (seconds for 70B)."""
from __future__ import annotations

import argparse

from ..adapters.config import METHODS, LorettaConfig
from ..run_config import _HELP, parse_bool


def add_loretta_arguments(parser: argparse.ArgumentParser) -> None:
    """The LorettaConfig options under their config names (shared by count, train, estimate);
    their help is train's, so the three commands describe each value the same way."""
    defaults = LorettaConfig()
    group = parser.add_argument_group("LoRETTA")
    group.add_argument("--method", default="rep", choices=METHODS,
                       help="rep (TT-factored LoRA update, mergeable) | adp (TT bottleneck adapters) (default rep)")
    group.add_argument("--r", type=int, default=defaults.r, help=_HELP["r"])
    group.add_argument("--tensor_rank", type=int, default=defaults.tensor_rank, help=_HELP["tensor_rank"])
    group.add_argument("--alpha", type=float, default=defaults.alpha, help=_HELP["alpha"])
    group.add_argument("--dropout", type=float, default=defaults.dropout, help=_HELP["dropout"])
    group.add_argument("--bottleneck", type=int, default=defaults.bottleneck, help=_HELP["bottleneck"])
    group.add_argument("--target_modules", default=None, help=_HELP["target_modules"])
    group.add_argument("--init", default=defaults.init, help=_HELP["init"])
    group.add_argument("--train_norms", type=parse_bool, default=True, help=_HELP["train_norms"])


def loretta_config_from_args(args: argparse.Namespace) -> LorettaConfig:
    return LorettaConfig(method=args.method, r=args.r, tensor_rank=args.tensor_rank, alpha=args.alpha,
                         dropout=args.dropout, bottleneck=args.bottleneck,
                         target_modules=args.target_modules, init=args.init, train_norms=args.train_norms)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="llama2-7b | llama2-13b | llama2-70b (shapes only) | tiny-llama | an HF model dir, "
                             "config.json or cached hub id: what train --model takes")
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
