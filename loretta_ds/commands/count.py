"""`loretta-ds count`: trainable vs total parameters, on a meta-device model (seconds for 70B)."""
from __future__ import annotations

import argparse

from ..adapters.config import LorettaConfig
from ..run_config import parse_bool


def add_loretta_arguments(parser: argparse.ArgumentParser) -> None:
    """The LorettaConfig options under their config names (shared by count, train, estimate)."""
    defaults = LorettaConfig()
    group = parser.add_argument_group("LoRETTA")
    group.add_argument("--method", default="rep", help="rep | adp")
    group.add_argument("--r", type=int, default=defaults.r, help="rep: rank of the update")
    group.add_argument("--tensor_rank", type=int, default=defaults.tensor_rank, help="TT bond rank")
    group.add_argument("--alpha", type=float, default=defaults.alpha, help="rep: update scale alpha (/ r)")
    group.add_argument("--dropout", type=float, default=defaults.dropout, help="rep: input dropout")
    group.add_argument("--bottleneck", type=int, default=defaults.bottleneck, help="adp: bottleneck width")
    group.add_argument("--target_modules", default=None,
                       help="comma-separated module names or a preset: attn, mlp, all (default: the method's)")
    group.add_argument("--init", default=defaults.init, help="zero | reference")
    group.add_argument("--train_norms", type=parse_bool, default=True, help="also train norm weights (true/false)")


def loretta_config_from_args(args: argparse.Namespace) -> LorettaConfig:
    return LorettaConfig(method=args.method, r=args.r, tensor_rank=args.tensor_rank, alpha=args.alpha,
                         dropout=args.dropout, bottleneck=args.bottleneck,
                         target_modules=args.target_modules, init=args.init, train_norms=args.train_norms)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="llama2-7b | llama2-13b | llama2-70b | an HF config.json or model dir")
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
    norms = sum(params[n].numel() for n in trainable_parameter_names(model) if "loretta_" not in n)
    print(f"model {args.model}: LoRETTA_{cfg.method} on {','.join(cfg.target_modules)} "
          f"(tensor_rank {cfg.tensor_rank}, {'r ' + str(cfg.r) if cfg.method == 'rep' else 'bottleneck ' + str(cfg.bottleneck)})")
    print(f"  adapter parameters   {trainable - norms:>15,}")
    print(f"  norm parameters      {norms:>15,}")
    print(f"  trainable            {trainable:>15,}  ({100 * trainable / total:.4f}% of {total:,})")
    print(f"  frozen base          {base_total:>15,}")
    return 0
