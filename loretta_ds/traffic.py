"""Bytes a LoRETTA step moves over PCIe, inside a node and across nodes, and what that costs in time.

From a memory plan (loretta_ds.estimate.MemoryEstimate: its setup says the ZeRO stage, offload and
hpZ), per GPU and per optimizer step of ``grad_accum`` micro batches. With c bytes per value
(2 in bf16, 4 in fp32), T = trainable parameters x c, F = the weights ZeRO-3 partitions (those
above the persistence threshold) x c, K = the part of F the reuse distance keeps gathered from the
forward to the backward, W = N nodes x G GPUs per node:

* trainable tensors   every layout: gradients reduce-scattered each micro batch (stage 2 and 3;
                      stage 1 once per step) and the updated tensors all-gathered once per step.
* frozen weights      stage 3 only: each micro batch gathers F in the forward and F - K again in the
                      backward (with checkpointing, the recompute and its backward share a gather).
                      Without hpZ the gather spans all W processes; with hpZ (zero_hpz_partition_size
                      = G) it reads the node's secondary copy, so after the first step it stays inside
                      the node (the first step's gathers span W; shown apart).
* PCIe (offload)      with parameter offload each GPU copies its part of every gather from host
                      memory: the primary partition (1/W) or, with hpZ, the secondary (1/G); with
                      optimizer offload the gradient partitions go down (each micro batch) and the
                      updated trainable partitions come back (once per step): T/W each.

A collective over S bytes spanning N nodes of G processes runs hierarchically (as NCCL's rings and
trees on rail-optimized clusters do): the processes with the same local rank exchange across nodes
what their node lacks, then the node's G processes exchange inside it. Each process receives
S (N-1) / (N G) over its network link and S (G-1) / G over NVLink, S (W-1) / W in all; each node
receives S (N-1) / N across its boundary.

Time: communication = PCIe bytes / PCIe bandwidth + NVLink bytes / NVLink bandwidth + network bytes /
network bandwidth (one direction each; no overlap). Compute = FLOPs / (peak x utilization), with
per token 2 x the matmul parameters (all but the input embedding) + 2 L s h for causal attention in
the forward; in the backward the same for the inputs' gradients (frozen weights need no weight
gradient) and twice the attention; with checkpointing one more forward. The step takes between
max(compute, communication) (perfect overlap) and their sum (none).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Documented defaults for one H100 SXM GPU in an HGX/DGX H100 node (one direction each):
PCIE_GEN5_X16 = 64e9          # bytes/s, PCIe Gen5 x16 to the host
NVLINK4 = 450e9               # bytes/s, NVLink 4 (900 GB/s both directions)
INFINIBAND_NDR = 50e9         # bytes/s, InfiniBand NDR 400 Gb/s, one adapter per GPU
H100_BF16_TFLOPS = 989.0      # dense bf16 tensor cores
H100_FP32_TFLOPS = 67.0       # fp32 without TF32 (torch's default for matmuls)
DEFAULT_UTILIZATION = 0.4     # share of the peak a well-tuned LLaMA step reaches (MFU)


@dataclass(frozen=True)
class Bandwidths:
    """The hardware a step time is estimated for (bytes/s one direction per GPU; TFLOPS per GPU)."""

    pcie: float = PCIE_GEN5_X16
    nvlink: float = NVLINK4
    network: float = INFINIBAND_NDR
    tflops: float | None = None       # None: the H100 figure for the run's precision
    utilization: float = DEFAULT_UTILIZATION

    def describe(self) -> str:
        compute = f"{self.tflops:g} TFLOPS" if self.tflops is not None else "H100 peak (989 TFLOPS bf16, 67 fp32)"
        return (f"PCIe {self.pcie / 1e9:g} GB/s, NVLink {self.nvlink / 1e9:g} GB/s, network {self.network / 1e9:g} "
                f"GB/s per device, {compute} at {self.utilization:.0%} utilization")

    def peak_flops(self, bf16: bool) -> float:
        tflops = self.tflops if self.tflops is not None else (H100_BF16_TFLOPS if bf16 else H100_FP32_TFLOPS)
        return tflops * 1e12

    def __post_init__(self) -> None:
        for name in ("pcie", "nvlink", "network", "utilization"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tflops is not None and not self.tflops > 0:
            raise ValueError(f"tflops must be > 0, got {self.tflops}")


@dataclass(frozen=True)
class Traffic:
    """Bytes per GPU per optimizer step (after the first step), and the times they take."""

    pcie_bytes: int
    intra_node_bytes: int
    cross_node_bytes: int                 # over this GPU's network link
    cross_node_bytes_per_node: int        # into one node across its boundary
    first_step_cross_node_bytes_per_node: int   # hpZ: the first step's gathers still cross nodes
    trainable_bytes: int                  # T, for scale
    flops: float
    compute_s: float
    communication_s: float

    @property
    def step_s_range(self) -> tuple[float, float]:
        return max(self.compute_s, self.communication_s), self.compute_s + self.communication_s

    def to_dict(self) -> dict:
        low, high = self.step_s_range
        return {**asdict(self), "step_s_min": low, "step_s_max": high}


def collective_bytes(size: int, nodes: int, per_node: int) -> tuple[int, int]:
    """(bytes over NVLink, bytes over the network) that one process receives in an all-gather or a
    reduce-scatter of ``size`` bytes over ``nodes`` x ``per_node`` processes (see the docstring)."""
    intra = size * (per_node - 1) // per_node
    cross = size * (nodes - 1) // (nodes * per_node)
    return intra, cross


def step_flops(e, config) -> float:
    """FLOPs of one GPU's micro batch (see the docstring)."""
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    embedding = 0 if getattr(config, "tie_word_embeddings", False) else int(config.vocab_size) * hidden
    matmul = e.total_params - embedding
    attention = 2 * layers * e.setup.seq_len * hidden
    forward = 2 * matmul + attention
    backward = 2 * matmul + 2 * attention
    passes = forward * (2 if e.setup.gradient_checkpointing else 1) + backward
    return float(passes * e.setup.tokens)


def step_traffic(e, config, grad_accum: int = 1, bandwidths: Bandwidths | None = None) -> Traffic:
    """The traffic of plan ``e`` (its setup: stage, offload, hpZ), per GPU per optimizer step."""
    bandwidths = bandwidths or Bandwidths()
    s = e.setup
    nodes, per_node, world, c = s.nodes, s.gpus_per_node, s.world_size, s.compute_bytes
    trainable = e.trainable_params * c
    reductions = grad_accum if s.zero_stage > 1 else 1
    intra = cross = pcie = first_cross = 0
    for count in (reductions, 1):  # gradients reduce-scattered, updated tensors all-gathered
        i, x = collective_bytes(trainable, nodes, per_node)
        intra, cross = intra + count * i, cross + count * x
    if s.zero_stage == 3:
        partitioned = e.partitioned_params * c
        gathered = grad_accum * (2 * partitioned - e.kept_by_reuse_params * c)
        if s.hpz_partition_size > 1:
            i, _ = collective_bytes(gathered, 1, s.hpz_partition_size)
            intra += i
            first_cross = collective_bytes(partitioned, nodes, per_node)[1] * per_node
        else:
            i, x = collective_bytes(gathered, nodes, per_node)
            intra, cross = intra + i, cross + x
        if s.offload == "param+optimizer":
            pcie += gathered // (s.hpz_partition_size if s.hpz_partition_size > 1 else world)
    if s.offload != "none":
        pcie += (grad_accum + 1) * trainable // world
    flops = grad_accum * step_flops(e, config)
    communication = pcie / bandwidths.pcie + intra / bandwidths.nvlink + cross / bandwidths.network
    compute = flops / (bandwidths.peak_flops(s.bf16) * bandwidths.utilization)
    return Traffic(pcie_bytes=pcie, intra_node_bytes=intra, cross_node_bytes=cross,
                   cross_node_bytes_per_node=cross * per_node, first_step_cross_node_bytes_per_node=first_cross,
                   trainable_bytes=trainable, flops=flops, compute_s=compute, communication_s=communication)
