"""Where LoRETTA_rep's extra GPU time goes: one q_proj-shaped layer (4096 x 4096, bf16, 4 x 1024
tokens), forward + backward, against the frozen layer and a plain LoRA r=8 layer; then the TT
contraction of A and B alone, with the bf16 cores contracted in bf16 and in fp32 (what
TTFactorMatrix.forward does for half-precision cores); then the GPU kernels of the rep layer with
each (torch.profiler). Run on a GPU machine:

    PYTHONPATH=. python benchmarks/gpu_tt_profile.py
"""
import time

import torch
from torch import nn

from loretta_ds.adapters import LorettaRepLinear
from loretta_ds.tt import TTFactorMatrix, tt_to_dense

DEVICE, DTYPE, TOKENS, FEATURES = "cuda", torch.bfloat16, 4 * 1024, 4096


class PlainLora(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base, self.scaling = base, alpha / r
        self.lora_A = nn.Parameter(torch.randn(r, FEATURES, device=DEVICE, dtype=DTYPE) * 0.01)
        self.lora_B = nn.Parameter(torch.randn(FEATURES, r, device=DEVICE, dtype=DTYPE) * 0.01)

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t()) @ self.lora_B.t() * self.scaling


def bf16_contraction(self: TTFactorMatrix) -> torch.Tensor:
    return tt_to_dense(self.cores(), self.d_in, self.d_out)


def ms_per_call(fn, repeats: int = 100) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(TOKENS, FEATURES, device=DEVICE, dtype=DTYPE, requires_grad=True)
    base = nn.Linear(FEATURES, FEATURES, bias=False, device=DEVICE, dtype=DTYPE).requires_grad_(False)
    rep = LorettaRepLinear(base, 8, 16.0, 5)
    rep.reset_parameters("reference")
    layers = {"frozen": base, "lora": PlainLora(base), "rep": rep}
    fp32_contraction = TTFactorMatrix.forward  # the core's own: fp32 for half-precision cores

    def contraction_alone():
        (rep.loretta_A().float().sum() + rep.loretta_B().float().sum()).backward()

    print(f"A cores {rep.loretta_A.core_shapes}, B cores {rep.loretta_B.core_shapes}")
    for round_ in range(2):
        for name, layer in layers.items():
            print(f"round {round_}: {name} layer fwd+bwd {ms_per_call(lambda: layer(x).sum().backward()):.3f} ms")
        for label, contraction in (("bf16", bf16_contraction), ("fp32", fp32_contraction)):
            TTFactorMatrix.forward = contraction
            print(f"round {round_}: contraction in {label}: A+B alone {ms_per_call(contraction_alone):.3f} ms, "
                  f"rep layer {ms_per_call(lambda: rep(x).sum().backward()):.3f} ms")
        TTFactorMatrix.forward = fp32_contraction

    for label, contraction in (("bf16", bf16_contraction), ("fp32", fp32_contraction)):
        TTFactorMatrix.forward = contraction
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                rep(x).sum().backward()
            torch.cuda.synchronize()
        kernels = prof.key_averages()
        gpu_us = sum(k.self_device_time_total for k in kernels) / 3
        print(f"\nrep layer, contraction in {label}: GPU busy {gpu_us / 1e3:.3f} ms per fwd+bwd")
        print(kernels.table(sort_by="self_device_time_total", row_limit=6, max_name_column_width=60))
    TTFactorMatrix.forward = fp32_contraction


if __name__ == "__main__":
    main()
