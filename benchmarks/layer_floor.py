"""The frozen floor of one LLaMA-2 decoder layer: bf16 forward + backward of a frozen layer for a few
tokens, gradient to the input only (no adapter), in one process; extrapolated to the whole model.

    python -m benchmarks.layer_floor --preset llama2-7b --tokens 8 --repeats 2

Two contenders, alternating in one process: "stock" (PyTorch's products) and "rerouted" (the trainer's
CPU bf16 path, loretta_ds.frozen_linear). The head (vocab x hidden) is timed the same way. A whole step
is extrapolated as layers x layer + head, the embedding lookup and norms being negligible beside them.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from loretta_ds.frozen_linear import reroute_frozen_bf16_linears
from loretta_ds.models import llama2_config


def _frozen(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.02) if param.dim() > 1 else param.fill_(1.0)
            param.requires_grad_(False)
    return module.to(torch.bfloat16)


def _step_seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama2-7b")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = llama2_config(args.preset)
    config._attn_implementation = "sdpa"
    layer = _frozen(LlamaDecoderLayer(config, layer_idx=0))
    head = _frozen(nn.Linear(config.hidden_size, config.vocab_size, bias=False))
    rotary = LlamaRotaryEmbedding(config)
    hidden = torch.randn(1, args.tokens, config.hidden_size, dtype=torch.bfloat16)
    positions = torch.arange(args.tokens)[None]
    embeddings = tuple(t.to(torch.bfloat16) for t in rotary(hidden, positions))

    def layer_step():
        x = hidden.clone().requires_grad_()
        out = layer(x, position_embeddings=embeddings, attention_mask=None, position_ids=positions)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()

    def head_step():
        x = hidden.clone().requires_grad_()
        head(x).float().logsumexp(-1).mean().backward()

    stock_forward = {m: m.forward for m in (*layer.modules(), head) if type(m) is nn.Linear}
    times = {"stock": {"layer": [], "head": []}, "rerouted": {"layer": [], "head": []}}
    reroute_frozen_bf16_linears(layer), reroute_frozen_bf16_linears(head)
    layer_step(), head_step()  # warm-up (the cheap contender: stock bf16 backward takes tens of seconds)
    for _ in range(args.repeats):
        for contender in ("stock", "rerouted"):
            if contender == "stock":
                for module, forward in stock_forward.items():
                    module.forward = forward
            else:
                reroute_frozen_bf16_linears(layer), reroute_frozen_bf16_linears(head)
            times[contender]["layer"].append(_step_seconds(layer_step))
            times[contender]["head"].append(_step_seconds(head_step))
    result = {"preset": args.preset, "tokens": args.tokens, "threads": args.threads,
              "layers": config.num_hidden_layers}
    for contender, measured in times.items():
        layer_s, head_s = min(measured["layer"]), min(measured["head"])
        result[contender] = {"layer_s": round(layer_s, 3), "head_s": round(head_s, 3),
                             "model_step_s": round(config.num_hidden_layers * layer_s + head_s, 1)}
    result["stock_over_rerouted"] = round(result["stock"]["model_step_s"] / result["rerouted"]["model_step_s"], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
