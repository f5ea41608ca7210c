"""CPU time per training step of what LoRETTA_rep computes beyond LoRA: contracting every TT factor
matrix of a PEFT-wrapped model into its dense A or B, forward and backward (one thread).

    python benchmarks/tt_contraction_cost.py --model DIR --repeats 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's loretta_ds

import torch  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from loretta_ds.integrations.peft import LorettaRepConfig
    from loretta_ds.integrations.peft.layers import RepLinear

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LorettaRepConfig(task_type="CAUSAL_LM", train_norms=False))
    factors = [pair[name] for layer in model.modules() if isinstance(layer, RepLinear)
               for pair in (layer.loretta_A, layer.loretta_B) for name in layer.active_adapters]

    def contract_all() -> None:  # what every training step does once per factor matrix
        sum(factor().sum() for factor in factors).backward()

    contract_all()
    times = []
    for _ in range(args.repeats):
        started = time.thread_time()
        contract_all()
        times.append(time.thread_time() - started)
    median_ms, min_ms = statistics.median(times) * 1e3, min(times) * 1e3
    print(f"{len(factors)} TT factor matrices ({factors[0].extra_repr()}, ...): forward+backward "
          f"{median_ms:.1f} ms CPU per step (median of {args.repeats}, min {min_ms:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
