"""Memory planning for a LoRETTA run under DeepSpeed ZeRO, from a meta-device model (no weights).

ZeRO-3 below; ZeRO stage 1 or 2 (``Setup.zero_stage``) keeps every weight whole on each GPU (no
partition, nothing gathered; stage 2 still splits gradients and optimizer state, stage 1 only the
optimizer state). ZeRO++ hpZ (``Setup.hpz_partition_size`` = the processes of a node) adds a second
copy of the partitioned weights split over the node, partitioned * c / hpz per GPU (in host memory
with parameter offload, as DeepSpeed keeps it on the partition's device).

Per GPU (world size W = nodes x gpus_per_node, c = 2 bytes in bf16, 4 in fp32):

* frozen partition   every frozen parameter above ZeRO-3's persistence threshold (stage3_param_
                     persistence_threshold, 1e5 elements by default) is split W ways: numel * c / W
                     (a trainable parameter that large, rare for LoRETTA, is split the same way).
* persistent weights parameters at or below the threshold stay whole on every GPU: all LoRETTA cores
                     and biases and every norm weight (numel * c each).
* gathered weights   ZeRO-3 all-gathers a module's partitioned weights before using it, prefetches
                     ahead, and after the module has run releases the weights that the step does not
                     use again within stage3_max_reuse_distance elements of its trace (1e9 by default
                     and in the shipped configs). Two sets are live at the top of backward: what the
                     prefetcher holds, which stops at stage3_max_live_parameters (1e9), and what the
                     reuse distance kept, which that cap does not bound: the output head (its backward
                     follows its forward) and the last decoder layers, as many as have their next use
                     (their backward; with checkpointing their recompute) within the distance. Layer k
                     of L is reused after the later layers' forward and backward (and recompute) and
                     the head's forward and backward: (m (L-1-k) + 1) P_layer + 2 P_head elements, m = 2
                     (3 with checkpointing), P the parameters of one layer or of the head. Gathered:
                     (max(max live, kept by reuse) + largest module) * c, at most the partitioned
                     total (docs/benchmarks.md section 3.1 measured both terms).
* gradients          trainable * c / W (reduce-scattered partitions).
* optimizer state    trainable * (4 master + 4 Adam m + 4 Adam v) / W in bf16 (no master in fp32:
                     8 / W); only trainable parameters have any.
* activations        see ``activation_bytes`` below; per GPU, for micro_batch_size x seq_len tokens.

Offload "optimizer" moves the optimizer state to host memory; "param+optimizer" also moves the
frozen partition there (the GPU keeps persistent and gathered weights). Host memory per node is
what the node's GPUs offload together. Model states (weights + gradients + optimizer) are the part
DeepSpeed's own estimator covers; it assumes every parameter trains (18 bytes per parameter / W on
GPU without offload); ``deepspeed_zero3_estimate`` reproduces its formula for comparison.

Activations, saved for backward per token per decoder layer (HF LLaMA, sdpa/flash attention:
no seq x seq score matrix is kept), with h hidden, i intermediate, kv = kv_heads x head_dim:

    2 RMSNorms     2 x (4h [fp32 input the norm squares] + c*h [normalized, if the norm weight trains])
    attention      c * (2h + 2kv)  [q and k after RoPE, v, attention output] + 4 * heads [logsumexp]
    MLP            3c * i          [gate, silu(gate), up]
    adapters       the input of each adapted module if the adapter keeps it (rep: x for x A; adp on
                   an input: h for h D; adp on an output: the module output), counted once when
                   several adapters read the same tensor (q, k, v read one norm output; gate and up
                   the other), plus c*r (rep) or c*b (adp) per adapter for the bottleneck.
    head           final norm as above, plus 12 V at the top of the loss's backward: the fp32
                   log-softmax (4V) and its gradient (4V), and the logits' gradient (4V in fp32;
                   2V in bf16 plus its fp32 copy, 2V). Measured 11-12 V in both precisions.
    per adapter    the dense factor matrices (d_in r + r d_out, or 2 d b) * c, once (not per token).

The peak comes at the top of backward: every layer's saved tensors plus the larger of the head's
12 V and one layer's backward temporaries (3c * i: the gradients of gate, silu(gate) and up).
With gradient checkpointing (one checkpoint per decoder layer) only each layer's input c*h is kept;
the head's backward and a recomputed layer (its activations + 3c * i) come one after the other,
so the peak is L * c*h plus the larger of the two.
Temporary buffers (communication buckets, pinned staging, allocator fragmentation, kernels'
workspace) are not modelled: keep some headroom.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

from torch import nn

from .adapters import LorettaAdpLinear, LorettaConfig, LorettaRepLinear, adapter_layers, inject
from .quantization import pack_quantized_weights

OFFLOADS = ("none", "optimizer", "param+optimizer")
DEFAULT_PERSISTENCE_THRESHOLD = 100_000   # DeepSpeed's stage3_param_persistence_threshold default
DEFAULT_PREFETCH_BUCKET = 50_000_000      # DeepSpeed's stage3_prefetch_bucket_size default
DEFAULT_MAX_LIVE_PARAMETERS = 1_000_000_000   # DeepSpeed's stage3_max_live_parameters default
DEFAULT_MAX_REUSE_DISTANCE = 1_000_000_000    # DeepSpeed's stage3_max_reuse_distance default
# The plan leaves out buffers and fragmentation (see above): a plan above this share of the GPU is tight.
TIGHT_FRACTION = 0.9

# Which tensor each LLaMA projection reads: projections reading the same tensor share its saved copy.
_SHARED_INPUT = {"q_proj": "attn_norm", "k_proj": "attn_norm", "v_proj": "attn_norm",
                 "gate_proj": "mlp_norm", "up_proj": "mlp_norm"}
_LAYER_PREFIX = re.compile(r"^(.*\.layers\.\d+)\.")


@dataclass
class Setup:
    """The hardware and DeepSpeed settings a plan is for."""

    nodes: int = 1
    gpus_per_node: int = 1
    offload: str = "none"
    bf16: bool = True
    micro_batch_size: int = 1
    seq_len: int = 4096
    gradient_checkpointing: bool = False
    param_persistence_threshold: int = DEFAULT_PERSISTENCE_THRESHOLD
    prefetch_bucket_size: int = DEFAULT_PREFETCH_BUCKET  # reported; the working set stops at max live
    max_live_parameters: int = DEFAULT_MAX_LIVE_PARAMETERS
    max_reuse_distance: int = DEFAULT_MAX_REUSE_DISTANCE
    # ZeRO stage 1 or 2 keeps every weight whole on each GPU (only gradients and optimizer state are
    # partitioned); stage 3 partitions the weights too.
    zero_stage: int = 3
    # ZeRO++ hierarchical partitioning (zero_hpz_partition_size): a second copy of every partitioned
    # weight, split over this many processes (those of one node), that the gathers after the first
    # step read instead of the primary partition. 1: none.
    hpz_partition_size: int = 1
    load_in_4bit: bool = False        # the frozen linear weights in 4 bits (loretta_ds.quantization)
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        for name in ("nodes", "gpus_per_node", "micro_batch_size", "seq_len", "hpz_partition_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.zero_stage != 3 and (self.offload == "param+optimizer" or self.hpz_partition_size > 1):
            raise ValueError("parameter offload and hierarchical partitioning (hpZ) need ZeRO stage 3")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def compute_bytes(self) -> int:
        return 2 if self.bf16 else 4

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.seq_len


@dataclass
class DeepSpeedEstimate:
    """What DeepSpeed's ZeRO-3 estimator says when every parameter trains (its only assumption)."""

    total_params: int
    largest_layer_params: int
    gpu_bytes: int             # per GPU, model states only
    host_bytes_per_node: int


@dataclass
class MemoryEstimate:
    """A memory plan; byte figures are per GPU unless the name says per node or file."""

    model: str
    method: str
    setup: Setup
    total_params: int
    trainable_params: int
    frozen_params: int
    persistent_params: int
    largest_module_params: int
    frozen_partition_bytes: int
    trainable_partition_bytes: int
    persistent_bytes: int
    gathered_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    activation_terms: dict = field(default_factory=dict)
    checkpointed_activation_bytes: int = 0   # the same run with gradient checkpointing on
    host_bytes_per_node: int = 0
    adapter_file_bytes: int = 0
    training_checkpoint_bytes: int = 0
    deepspeed: DeepSpeedEstimate | None = None
    partitioned_params: int = 0          # parameters above the persistence threshold (ZeRO-3 splits them)
    kept_by_reuse_params: int = 0        # of those, kept gathered from the forward to the backward
    secondary_partition_bytes: int = 0   # hpZ's second copy (per GPU; in host memory with parameter offload)
    # A 4-bit base: the block scales (whole on every GPU) and one layer's weight dequantized for its matmul.
    quantization_bytes: int = 0

    @property
    def gpu_weight_bytes(self) -> int:
        """Weights resident on one GPU: its partition (unless offloaded), persistent, gathered."""
        partition = self.frozen_partition_bytes + self.trainable_partition_bytes + self.secondary_partition_bytes
        on_gpu_partition = 0 if self.setup.offload == "param+optimizer" else partition
        return on_gpu_partition + self.persistent_bytes + self.gathered_bytes + self.quantization_bytes

    @property
    def gpu_model_state_bytes(self) -> int:
        """Weights + gradients + optimizer state on one GPU (what DeepSpeed's estimator covers)."""
        optimizer = 0 if self.setup.offload != "none" else self.optimizer_bytes
        return self.gpu_weight_bytes + self.gradient_bytes + optimizer

    @property
    def gpu_total_bytes(self) -> int:
        return self.gpu_model_state_bytes + self.activation_bytes

    @property
    def process_model_state_bytes(self) -> int:
        """What one process holds between steps, on its GPU and offloaded to the host together:
        weight partitions, persistent weights, gradients, optimizer state (on a CPU-only machine
        all of it is the process's memory)."""
        return (self.frozen_partition_bytes + self.trainable_partition_bytes + self.secondary_partition_bytes
                + self.persistent_bytes + self.gradient_bytes + self.optimizer_bytes)

    @property
    def checkpointed_gpu_total_bytes(self) -> int:
        """Per-GPU total of the same run with gradient checkpointing on."""
        return self.gpu_model_state_bytes + self.checkpointed_activation_bytes

    @property
    def full_training_checkpoint_bytes(self) -> int:
        """The same checkpoint if every parameter trained (weights + fp32 master + Adam m, v)."""
        return self.total_params * self.training_checkpoint_bytes // max(self.trainable_params, 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(gpu_weight_bytes=self.gpu_weight_bytes, gpu_model_state_bytes=self.gpu_model_state_bytes,
                    gpu_total_bytes=self.gpu_total_bytes, checkpointed_gpu_total_bytes=self.checkpointed_gpu_total_bytes,
                    process_model_state_bytes=self.process_model_state_bytes, world_size=self.setup.world_size)
        return data


@dataclass
class Verdict:
    """Whether a plan fits on one GPU of ``gpu_bytes``, and what gradient checkpointing would change."""

    gpu_bytes: int
    fits: bool
    tight: bool                        # fits, but above TIGHT_FRACTION of the GPU
    activations_dominate: bool         # activations above the model states, checkpointing off
    checkpointed_total_bytes: int | None = None   # set when checkpointing is worth suggesting
    checkpointed_fits: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(e: MemoryEstimate, gpu_bytes: int) -> Verdict:
    """Judge a plan against a GPU's memory. Checkpointing is suggested when it is off and the
    activations are the larger part of the total: it is the one flag that shrinks them most."""
    if gpu_bytes <= 0:
        raise ValueError(f"gpu memory must be > 0, got {gpu_bytes} bytes; pass --gpu_memory in GiB, e.g. 80")
    total = e.gpu_total_bytes
    dominate = not e.setup.gradient_checkpointing and e.activation_bytes > e.gpu_model_state_bytes
    result = Verdict(gpu_bytes=gpu_bytes, fits=total <= gpu_bytes,
                     tight=TIGHT_FRACTION * gpu_bytes < total <= gpu_bytes, activations_dominate=dominate)
    if dominate:
        result.checkpointed_total_bytes = e.checkpointed_gpu_total_bytes
        result.checkpointed_fits = e.checkpointed_gpu_total_bytes <= gpu_bytes
    return result


def deepspeed_zero3_estimate(total_params: int, largest_layer_params: int, setup: Setup,
                             additional_buffer_factor: float = 1.5) -> DeepSpeedEstimate:
    """DeepSpeed's ``estimate_zero3_model_states_mem_needs`` (zero_init=True), re-stated here so this
    module needs no DeepSpeed import; tests compare it with DeepSpeed's own function."""
    gpus, nodes = setup.gpus_per_node, setup.nodes
    largest_layer_memory = 4 * largest_layer_params
    if setup.offload == "param+optimizer":
        gpu = largest_layer_memory
        host = total_params * 18 / nodes * additional_buffer_factor
    elif setup.offload == "optimizer":
        gpu = largest_layer_memory + int(2 * total_params / (gpus * nodes))
        host = total_params * 16 / nodes * additional_buffer_factor
    else:
        gpu = largest_layer_memory + int(18 * total_params / (gpus * nodes))
        host = largest_layer_params * 4 * gpus * additional_buffer_factor
    return DeepSpeedEstimate(total_params, largest_layer_params, int(gpu), int(host))


def _largest_module_params(model: nn.Module) -> int:
    """Largest parameter count held directly by one module (DeepSpeed's "largest layer")."""
    return max((sum(int(p.numel()) for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def _model_dims(config) -> dict:
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return {"hidden": hidden, "intermediate": int(getattr(config, "intermediate_size", None) or 4 * hidden),
            "layers": int(config.num_hidden_layers), "heads": heads, "kv": kv_heads * head_dim,
            "vocab": int(config.vocab_size)}


def _adapter_activations(model: nn.Module, c: int, dims: dict) -> tuple[dict[str, int], int]:
    """Per-token bytes the adapters keep, per decoder layer prefix; and their per-step constant."""
    per_layer: dict[str, int] = {}
    constant = 0
    seen_inputs: set[tuple[str, str]] = set()
    for name, layer in adapter_layers(model).items():
        match = _LAYER_PREFIX.match(name)
        prefix = match.group(1) if match else ""
        leaf = name.rsplit(".", 1)[-1]
        extra = 0
        if isinstance(layer, LorettaRepLinear) or (isinstance(layer, LorettaAdpLinear) and layer.position == "input"):
            source = (prefix, _SHARED_INPUT.get(leaf, leaf))
            if source not in seen_inputs:
                seen_inputs.add(source)
                extra += c * layer.in_features
        else:  # adapter on the module's output keeps that output
            extra += c * layer.out_features
        if isinstance(layer, LorettaRepLinear):
            extra += c * layer.r
            constant += c * layer.r * (layer.in_features + layer.out_features)
        else:
            bottleneck = layer.loretta_down_bias.numel()
            extra += c * bottleneck
            constant += 2 * c * bottleneck * layer.features
        per_layer[prefix] = per_layer.get(prefix, 0) + extra
    return per_layer, constant


def activation_terms(model: nn.Module, config, cfg: LorettaConfig, setup: Setup) -> dict:
    """The activation formula's terms (bytes per token unless named otherwise) and its total."""
    c, d = setup.compute_bytes, _model_dims(config)
    h, i, kv, heads, vocab, layers = d["hidden"], d["intermediate"], d["kv"], d["heads"], d["vocab"], d["layers"]
    norm = 4 * h + (c * h if cfg.train_norms else 0)
    base_layer = 2 * norm + c * (2 * h + 2 * kv) + 4 * heads + 3 * c * i
    adapters, constant = _adapter_activations(model, c, d)
    adapter_max = max(adapters.values(), default=0)
    adapter_sum = sum(adapters.values())
    head = norm + 12 * vocab
    layer_backward = 3 * c * i  # gate, silu(gate) and up's gradients while the MLP's backward runs
    tokens = setup.tokens
    if setup.gradient_checkpointing:
        per_token = layers * c * h + max(head, base_layer + adapter_max + layer_backward)
    else:
        per_token = layers * base_layer + adapter_sum + max(head, layer_backward)
    return {"bytes_per_token_per_layer": base_layer, "adapter_bytes_per_token": adapter_sum,
            "head_bytes_per_token": head, "layer_backward_bytes_per_token": layer_backward,
            "adapter_constant_bytes": constant, "bytes_per_token": per_token, "tokens": tokens,
            "total_bytes": per_token * tokens + constant}


def _kept_by_reuse_distance(model: nn.Module, setup: Setup) -> int:
    """Partitioned parameters ZeRO-3 keeps gathered from the forward to their next use because that
    use comes within stage3_max_reuse_distance elements of its trace: the output head's and those of
    the last decoder layers (see the module's docstring)."""
    threshold = setup.param_persistence_threshold
    layers: dict[str, list[int]] = {}  # decoder layer -> [all parameters, the partitioned ones], in model order
    for name, param in model.named_parameters():
        match = _LAYER_PREFIX.match(name)
        if match:
            sizes = layers.setdefault(match.group(1), [0, 0])
            sizes[0] += int(param.numel())
            sizes[1] += int(param.numel()) if param.numel() > threshold else 0
    head = model.get_output_embeddings()
    head_numels = [int(p.numel()) for p in head.parameters()] if head is not None else []
    head_all, head_partitioned = sum(head_numels), sum(n for n in head_numels if n > threshold)
    passes = 3 if setup.gradient_checkpointing else 2  # forward, backward (and the recompute) of each later layer
    kept = head_partitioned if 2 * head_all < setup.max_reuse_distance else 0
    for later, (layer_all, layer_partitioned) in enumerate(reversed(list(layers.values()))):
        if (passes * later + 1) * layer_all + 2 * head_all >= setup.max_reuse_distance:
            break
        kept += layer_partitioned
    return kept


@dataclass(frozen=True)
class PreparedModel:
    """The adapted model on the meta device and the base's counts, for several plans of one model."""

    model: nn.Module
    base_params: int
    base_largest_module_params: int


def prepare_model(config, cfg: LorettaConfig) -> PreparedModel:
    """Build the adapted meta-device model once (about a second for 70B) for ``estimate_memory``."""
    from .models import meta_model

    base = meta_model(config)
    base_params, largest = sum(int(p.numel()) for p in base.parameters()), _largest_module_params(base)
    return PreparedModel(inject(base, cfg), base_params, largest)


def estimate_memory(config, cfg: LorettaConfig, setup: Setup | None = None, model_name: str = "",
                    prepared: PreparedModel | None = None, **setup_overrides) -> MemoryEstimate:
    """Plan the memory of a LoRETTA run of ``config`` (an HF model config) under ZeRO (stage 3 unless
    the setup says otherwise).

    ``setup`` (or keyword overrides of its fields) gives nodes, GPUs, stage, offload, precision,
    batch and sequence length. Builds the adapted model on the meta device (seconds even for 70B),
    unless ``prepared`` (``prepare_model`` of the same config and adapter) is given.
    """
    setup = setup or Setup(**setup_overrides)
    c, world = setup.compute_bytes, setup.world_size
    # Stage 1/2 keep every weight whole: the "partition" of the weights is all of them.
    weight_shards = world if setup.zero_stage == 3 else 1
    if setup.load_in_4bit:
        prepared = prepare_model(config, cfg)  # packing below rewrites its weights: never a shared model
    prepared = prepared or prepare_model(config, cfg)
    ds = deepspeed_zero3_estimate(prepared.base_params, prepared.base_largest_module_params, setup)
    model = prepared.model
    real_total = sum(int(p.numel()) for p in model.parameters())
    quantization_bytes = 0
    if setup.load_in_4bit:
        # From here the quantized weights count as their packed codes (what ZeRO holds of them).
        scales, largest_quantized = pack_quantized_weights(model, c, setup.double_quant)
        quantization_bytes = scales + largest_quantized * c

    total = trainable = persistent = partitioned_frozen = partitioned_trainable = 0
    for param in model.parameters():
        n = int(param.numel())
        total += n
        trainable += n if param.requires_grad else 0
        if n <= setup.param_persistence_threshold:
            persistent += n
        elif param.requires_grad:
            partitioned_trainable += n
        else:
            partitioned_frozen += n
    kept_by_reuse = _kept_by_reuse_distance(model, setup) if setup.zero_stage == 3 else 0
    optimizer_per_param = 12 if setup.bf16 else 8
    largest = _largest_module_params(model)
    frozen_partition = partitioned_frozen * c // weight_shards
    trainable_partition = partitioned_trainable * c // weight_shards
    # The prefetcher stops at stage3_max_live_parameters, the reuse distance keeps what it keeps
    # whatever that count, and the module in use is fetched in any case (see the docstring).
    working = max(setup.max_live_parameters, kept_by_reuse) + largest
    gathered = min(working, partitioned_frozen + partitioned_trainable) * c if setup.zero_stage == 3 else 0
    secondary = ((partitioned_frozen + partitioned_trainable) * c // setup.hpz_partition_size
                 if setup.hpz_partition_size > 1 else 0)
    optimizer = trainable * optimizer_per_param // world
    # ZeRO-1 keeps whole gradients on each GPU; stage 2 and 3 reduce-scatter them.
    gradient = trainable * c // (world if setup.zero_stage > 1 else 1)
    terms = activation_terms(model, config, cfg, setup)
    checkpointed = activation_terms(model, config, cfg, replace(setup, gradient_checkpointing=True))

    host_per_gpu = optimizer if setup.offload != "none" else 0
    if setup.offload == "param+optimizer":
        host_per_gpu += frozen_partition + trainable_partition + secondary  # hpZ's copy follows the partition
    return MemoryEstimate(
        model=model_name or str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "")),
        method=cfg.method, setup=setup, total_params=real_total, trainable_params=trainable,
        frozen_params=real_total - trainable, persistent_params=persistent, largest_module_params=largest,
        frozen_partition_bytes=frozen_partition, trainable_partition_bytes=trainable_partition,
        persistent_bytes=persistent * c, gathered_bytes=gathered,
        gradient_bytes=gradient, optimizer_bytes=optimizer,
        activation_bytes=terms["total_bytes"], activation_terms=terms,
        checkpointed_activation_bytes=checkpointed["total_bytes"],
        host_bytes_per_node=host_per_gpu * setup.gpus_per_node,
        adapter_file_bytes=trainable * c, training_checkpoint_bytes=trainable * (c + optimizer_per_param),
        deepspeed=ds, partitioned_params=partitioned_frozen + partitioned_trainable,
        kept_by_reuse_params=min(kept_by_reuse, partitioned_frozen + partitioned_trainable),
        secondary_partition_bytes=secondary, quantization_bytes=quantization_bytes,
    )


def _offload_of(zero: dict) -> str:
    """The Setup.offload of a ZeRO section: which of parameters and optimizer state go to the host."""
    def device(key: str) -> str:
        section = zero.get(key) or {}
        return section.get("device", "none") if isinstance(section, dict) else str(section)

    param, optimizer = device("offload_param") != "none", device("offload_optimizer") != "none"
    if param and not optimizer:
        raise ValueError("the DeepSpeed config offloads parameters but not the optimizer state; the estimate models "
                         "no offload, the optimizer's, or both (offload_param needs offload_optimizer here)")
    return "param+optimizer" if param else "optimizer" if optimizer else "none"


def setup_from_ds_config(resolved: dict, *, nodes: int, gpus_per_node: int, seq_len: int,
                         gradient_checkpointing: bool, load_in_4bit: bool = False,
                         double_quant: bool = True) -> Setup:
    """The Setup of a resolved DeepSpeed config (every "auto" filled) on this many processes."""
    zero = resolved["zero_optimization"]
    stage = int(zero["stage"])
    return Setup(nodes=nodes, gpus_per_node=gpus_per_node, offload=_offload_of(zero), zero_stage=stage,
                 hpz_partition_size=int(zero.get("zero_hpz_partition_size", 1)) if stage == 3 else 1,
                 bf16=bool(resolved["bf16"]["enabled"]),
                 micro_batch_size=int(resolved["train_micro_batch_size_per_gpu"]),
                 seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
                 param_persistence_threshold=int(zero.get("stage3_param_persistence_threshold",
                                                          DEFAULT_PERSISTENCE_THRESHOLD)),
                 prefetch_bucket_size=int(zero.get("stage3_prefetch_bucket_size", DEFAULT_PREFETCH_BUCKET)),
                 max_live_parameters=int(zero.get("stage3_max_live_parameters", DEFAULT_MAX_LIVE_PARAMETERS)),
                 max_reuse_distance=int(zero.get("stage3_max_reuse_distance", DEFAULT_MAX_REUSE_DISTANCE)),
                 load_in_4bit=load_in_4bit, double_quant=double_quant)


def setup_for_ds_config(config, cfg: LorettaConfig, ds_config, *, nodes: int = 1, gpus_per_node: int = 1,
                        seq_len: int = 4096, gradient_checkpointing: bool = False,
                        micro_batch_size: int | None = None, bf16: bool | None = None, offload: str | None = None,
                        param_persistence_threshold: int | None = None, load_in_4bit: bool = False,
                        double_quant: bool = True, hpz_partition_size: int = 1, prepared: PreparedModel | None = None) -> tuple[Setup, list[str]]:
    """The Setup of ``loretta-ds train --ds_config DS_CONFIG`` with these settings (``config``: an HF
    config; ``ds_config``: a shipped config's name, a path or a dict), and notes on where each
    setting came from. The config is resolved as the trainer resolves it
    (loretta_ds.distributed.ds_config: "auto" values, the trainer's defaults, the persistence
    threshold raised to the largest trainable tensor; ``hpz_partition_size`` for a ZeRO-3 hpZ
    "auto"); a setting given here (not None) replaces the config's, where the trainer would refuse
    a flag that contradicts it. ``prepared``: ``prepare_model(config, cfg)`` when already built."""
    import copy

    from .distributed.ds_config import RunFacts, load_ds_config, resolve_ds_config, zero_stage
    from .adapters import trainable_parameter_names
    from .run_config import DEFAULT_GLOBAL_BATCH

    raw = copy.deepcopy(ds_config) if isinstance(ds_config, dict) else load_ds_config(ds_config)
    zero_stage(raw)
    zero = raw["zero_optimization"]
    if micro_batch_size is not None:
        # The setting given here wins; a fixed global batch in the config would then contradict it.
        raw["train_micro_batch_size_per_gpu"] = micro_batch_size
        raw["train_batch_size"] = "auto"
    if bf16 is not None:
        raw["bf16"] = {**(raw.get("bf16") if isinstance(raw.get("bf16"), dict) else {}), "enabled": bool(bf16)}
    if offload is not None:
        if offload not in OFFLOADS:
            raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}")
        zero["offload_param"] = {"device": "cpu" if offload == "param+optimizer" else "none"}
        zero["offload_optimizer"] = {"device": "none" if offload == "none" else "cpu"}
    if param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = param_persistence_threshold
    model = (prepared or prepare_model(config, cfg)).model
    trainable = set(trainable_parameter_names(model))
    numels = [int(p.numel()) for name, p in model.named_parameters() if name in trainable]
    frozen = [int(p.numel()) for name, p in model.named_parameters() if name not in trainable]
    facts = RunFacts(world_size=nodes * gpus_per_node, lr=None, warmup_steps=None, total_steps=100, grad_clip=None,
                     bf16=None, hidden_size=int(config.hidden_size), max_trainable_numel=max(numels),
                     total_trainable_numel=sum(numels), frozen_numels=tuple(frozen), cuda_available=True,
                     default_global_batch=DEFAULT_GLOBAL_BATCH, hpz_partition_size=hpz_partition_size)
    resolved, notes = resolve_ds_config(raw, facts)
    setup = setup_from_ds_config(resolved, nodes=nodes, gpus_per_node=gpus_per_node, seq_len=seq_len,
                                 gradient_checkpointing=gradient_checkpointing,
                                 load_in_4bit=load_in_4bit, double_quant=double_quant)
    if micro_batch_size is None:
        notes.append(f"micro batch {setup.micro_batch_size}: the trainer's, from the config's batch sizes or its "
                     f"default global batch {DEFAULT_GLOBAL_BATCH} over {setup.world_size} process(es)")
    if bf16 is None:
        notes.append(f"{'bf16' if setup.bf16 else 'fp32'}: the config's bf16.enabled"
                     + (" (auto: the trainer's default, fp32, without --bf16)" if not setup.bf16 else ""))
    return setup, notes


def estimate_from_ds_config(model, cfg: LorettaConfig, ds_config, *, model_name: str = "",
                            **settings) -> tuple[MemoryEstimate, list[str]]:
    """The plan of ``loretta-ds train --ds_config DS_CONFIG`` with these settings (those of
    ``setup_for_ds_config``), and notes on where each setting came from. ``model``: what --model
    takes, or an HF config."""
    from .models import load_model_config

    config = load_model_config(model) if isinstance(model, str) else model
    name = model_name or (model if isinstance(model, str) else "")
    prepared = prepare_model(config, cfg)
    setup, notes = setup_for_ds_config(config, cfg, ds_config, prepared=prepared, **settings)
    return estimate_memory(config, cfg, setup, model_name=name, prepared=prepared), notes
