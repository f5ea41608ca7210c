"""``--ds_config auto``: the fastest DeepSpeed layout whose memory fits, chosen from the memory plan.

LoRETTA's optimizer state is megabytes, so a layout only decides where the frozen base lives and
what crosses the interconnect each step. In order of speed, the first that fits is chosen:

1. replicated      the frozen base whole on every process (ZeRO-2, the shipped zero2.json) when
                   base + activations + the reserve fit one device. Only the trainable tensors'
                   gradients and updates move between processes.
2. node            ZeRO-3 (zero3.json) when the base partitioned over one node's processes fits:
                   on several nodes with zero_hpz_partition_size = processes per node, whose
                   second copy of the partitioned weights lets every gather after the first step
                   stay inside the node.
3. all_nodes       ZeRO-3 over every process without hpZ (several nodes only): the hpZ copy does
                   not fit, the primary partition does; each step gathers the base across nodes.
4. offload         ZeRO-3 with the parameters and optimizer state in host memory
                   (zero3_offload.json; hpZ, whose copy then lives in host memory too, where it
                   fits there): each step copies the base over PCIe.
None fits: refused before anything loads, with each layout's figures.

"Fits" uses loretta_ds.estimate's plan (so a change to how weights or activations are counted
changes the choice) plus a reserve of RESERVE_FRACTION of the device, at least RESERVE_MIN_BYTES,
for what that plan leaves out (CUDA context, allocator fragmentation, communication buckets).
Every rank decides alone, from figures every rank sees alike: the device's total memory (never
its free memory), or on a machine without CUDA the host's memory over the processes per node;
``--gpu_memory`` / ``--host_memory`` replace them.

No DeepSpeed import here: the choice is testable without processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .distributed.ds_config import AUTO_LAYOUT, LAYOUT_TEMPLATE
from .estimate import MemoryEstimate, PreparedModel, Setup, estimate_memory, prepare_model
from .traffic import Bandwidths, Traffic, step_traffic

RESERVE_FRACTION = 0.10
RESERVE_MIN_BYTES = 2 * 2**30

# name -> (the shipped DeepSpeed config it runs, what it is)
LAYOUTS = {
    "replicated": ("zero2", "frozen base replicated on every process (ZeRO-2)"),
    "node": ("zero3", "ZeRO-3, frozen base partitioned inside each node"),
    "all_nodes": ("zero3", "ZeRO-3, frozen base partitioned over all nodes"),
    "offload": ("zero3_offload", "ZeRO-3 with parameters and optimizer state offloaded to host memory"),
}
GIB = 2**30


def _gib(n: float) -> str:
    """Memory in GiB, or MiB below one GiB (the tiny models' figures stay readable)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{1e3 * s:.1f} ms" if s >= 1e-3 else f"{1e6 * s:.0f} us"


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def host_memory_bytes() -> int:
    """This machine's memory: physical RAM, or the cgroup's limit where lower. Total, never free,
    so every process of a node computes the same figure."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
        break
    return total


@dataclass(frozen=True)
class Hardware:
    """What a layout must fit: nodes x processes per node, one device's memory, one node's host memory."""

    nodes: int
    per_node: int
    device_bytes: int
    host_bytes: int
    device_source: str
    host_source: str
    device_is_host: bool = False   # no accelerator: the "device" is a share of the host's memory

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.per_node < 1:
            raise ValueError(f"nodes and processes per node must be >= 1, got {self.nodes} x {self.per_node}")
        if self.device_bytes <= 0 or self.host_bytes <= 0:
            raise ValueError("device and host memory must be > 0 (--gpu_memory / --host_memory in GiB)")

    @property
    def world_size(self) -> int:
        return self.nodes * self.per_node

    @property
    def reserve_bytes(self) -> int:
        return max(int(RESERVE_FRACTION * self.device_bytes), RESERVE_MIN_BYTES)

    def describe(self) -> str:
        return (f"{self.nodes} node(s) x {self.per_node} process(es), {_gib(self.device_bytes)} per device "
                f"({self.device_source}), {_gib(self.host_bytes)} host memory per node ({self.host_source}), "
                f"reserve {_gib(self.reserve_bytes)} per device")

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "processes_per_node": self.per_node, "device_bytes": self.device_bytes,
                "device_source": self.device_source, "host_bytes": self.host_bytes, "host_source": self.host_source,
                "device_is_host": self.device_is_host, "reserve_bytes": self.reserve_bytes}


def detect_hardware(nodes: int, per_node: int, gpu_memory_gib: float | None = None,
                    host_memory_gib: float | None = None, cuda: bool | None = None) -> Hardware:
    """The Hardware of this run: given figures (GiB) where passed, else this machine's totals."""
    host, host_source = ((int(host_memory_gib * GIB), "--host_memory") if host_memory_gib is not None
                         else (host_memory_bytes(), "this machine's total"))
    if gpu_memory_gib is not None:
        return Hardware(nodes, per_node, int(gpu_memory_gib * GIB), host, "--gpu_memory", host_source)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        import torch

        return Hardware(nodes, per_node, int(torch.cuda.get_device_properties(0).total_memory), host,
                        "CUDA device 0's total memory", host_source)
    return Hardware(nodes, per_node, host // per_node, host, "no CUDA device: host memory / processes per node",
                    host_source, device_is_host=True)


@dataclass(frozen=True)
class Candidate:
    """One layout's plan against the hardware."""

    name: str
    hpz: int
    estimate: MemoryEstimate
    traffic: Traffic
    device_need: int        # the plan's total per device + the reserve
    host_need: int          # per node: what the offload keeps there (0 without)
    host_available: int
    device_bytes: int

    @property
    def ds_config_name(self) -> str:
        return LAYOUTS[self.name][0]

    @property
    def title(self) -> str:
        return LAYOUTS[self.name][1] + (f", hpZ {self.hpz} (gathers stay inside the node)" if self.hpz > 1 else "")

    @property
    def fits_device(self) -> bool:
        return self.device_need <= self.device_bytes

    @property
    def fits(self) -> bool:
        return self.fits_device and self.host_need <= self.host_available

    def need(self) -> str:
        text = f"{_gib(self.device_need)} per device of {_gib(self.device_bytes)}"
        if self.host_need:
            text += f", {_gib(self.host_need)} host memory per node of {_gib(self.host_available)}"
        return text

    def traffic_line(self) -> str:
        t = self.traffic
        low, high = t.step_s_range
        first = (f" (first step {_size(t.first_step_cross_node_bytes_per_node)})"
                 if t.first_step_cross_node_bytes_per_node else "")
        return (f"per step: {_size(t.cross_node_bytes_per_node)} across each node's boundary{first}, "
                f"{_size(t.intra_node_bytes)} NVLink and {_size(t.pcie_bytes)} PCIe per device; "
                f"communication {_seconds(t.communication_s)}, step {_seconds(low)} to {_seconds(high)}")

    def to_dict(self) -> dict:
        e = self.estimate
        return {"name": self.name, "title": self.title, "ds_config": self.ds_config_name,
                "zero_stage": e.setup.zero_stage, "offload": e.setup.offload, "zero_hpz_partition_size": self.hpz,
                "fits": self.fits, "device_need_bytes": self.device_need, "device_plan_bytes": e.gpu_total_bytes,
                "host_need_bytes_per_node": self.host_need, "traffic": self.traffic.to_dict()}


@dataclass(frozen=True)
class LayoutChoice:
    """The layouts considered, in order, and the one chosen (None: nothing fits)."""

    hardware: Hardware
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None
    reason: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    bandwidths: Bandwidths = field(default_factory=Bandwidths)

    def ds_config(self) -> dict:
        """The chosen layout's DeepSpeed config: the shipped one, hpZ set ("auto" values stay for the
        trainer's resolve)."""
        from .distributed.ds_config import load_ds_config

        if self.chosen is None:
            raise ValueError(self.reason)
        config = load_ds_config(self.chosen.ds_config_name)
        if self.chosen.estimate.setup.zero_stage == 3:
            config["zero_optimization"]["zero_hpz_partition_size"] = self.chosen.hpz
        return config

    def lines(self) -> list[str]:
        """What the run log and `plan` print: the choice, why, and what each layout would need."""
        head = (f"layout auto: {self.chosen.name} ({self.chosen.title})" if self.chosen
                else "layout auto: no layout fits")
        lines = [head, f"  why: {self.reason}", f"  hardware: {self.hardware.describe()}",
                 f"  per layout (times for {self.bandwidths.describe()}):"]
        for candidate in self.candidates:
            mark = "chosen" if candidate is self.chosen else ("fits" if candidate.fits else "does not fit")
            lines.append(f"    {candidate.name:<10} {mark:<12} needs {candidate.need()}")
            lines.append(f"    {'':<10} {'':<12} {candidate.traffic_line()}")
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def to_dict(self) -> dict:
        """run_config.json's "layout"."""
        return {"requested": AUTO_LAYOUT, "chosen": self.chosen.name if self.chosen else None,
                "ds_config": self.chosen.ds_config_name if self.chosen else None,
                "zero_hpz_partition_size": self.chosen.hpz if self.chosen else None,
                "reason": self.reason, "hardware": self.hardware.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates], "notes": list(self.notes)}


def _candidate(name: str, setup: Setup, hardware: Hardware, config, cfg, prepared: PreparedModel,
               grad_accum: int, bandwidths: Bandwidths | None) -> Candidate:
    e = estimate_memory(config, cfg, setup, prepared=prepared)
    device_need = e.gpu_total_bytes + hardware.reserve_bytes
    host_available = hardware.host_bytes - (hardware.per_node * device_need if hardware.device_is_host else 0)
    return Candidate(name=name, hpz=setup.hpz_partition_size, estimate=e,
                     traffic=step_traffic(e, config, grad_accum, bandwidths), device_need=device_need,
                     host_need=e.host_bytes_per_node, host_available=host_available,
                     device_bytes=hardware.device_bytes)


def candidates(config, cfg, hardware: Hardware, base: Setup, grad_accum: int = 1,
               bandwidths: Bandwidths | None = None, prepared: PreparedModel | None = None) -> list[Candidate]:
    """Every layout this hardware allows, fastest first (see the module's docstring). ``base`` gives
    precision, micro batch, sequence length, checkpointing and the ZeRO-3 thresholds."""
    prepared = prepared or prepare_model(config, cfg)
    base = replace(base, nodes=hardware.nodes, gpus_per_node=hardware.per_node)
    hpz = hardware.per_node if hardware.nodes > 1 and hardware.per_node > 1 else 1

    def make(name: str, **changes) -> Candidate:
        return _candidate(name, replace(base, **changes), hardware, config, cfg, prepared, grad_accum, bandwidths)

    found = [make("replicated", zero_stage=2, offload="none", hpz_partition_size=1)]
    if hardware.per_node > 1:  # one process per node: partitioned "inside the node" is replicated
        found.append(make("node", zero_stage=3, offload="none", hpz_partition_size=hpz))
    if hardware.nodes > 1:
        found.append(make("all_nodes", zero_stage=3, offload="none", hpz_partition_size=1))
    offload = make("offload", zero_stage=3, offload="param+optimizer", hpz_partition_size=hpz)
    if hpz > 1 and not offload.fits:  # the hpZ copy in host memory does not fit there: without it
        offload = make("offload", zero_stage=3, offload="param+optimizer", hpz_partition_size=1)
    found.append(offload)
    return found


def _why(chosen: Candidate, found: list[Candidate], hardware: Hardware) -> str:
    e = chosen.estimate
    base = f"{_gib(e.frozen_partition_bytes + e.persistent_bytes)}"
    if chosen.name == "replicated":
        return (f"the whole model ({base}) + activations ({_gib(e.activation_bytes)}) + the reserve fit one "
                f"device ({_gib(chosen.device_need)} of {_gib(hardware.device_bytes)}): no frozen weight moves "
                "between processes; only the trainable tensors' gradients and updates do")
    replicated = found[0]
    if chosen.name == "node":
        where = (f"the node's {hardware.per_node} devices, with the hpZ copy"
                 if chosen.hpz > 1 else f"the node's {hardware.per_node} device(s)")
        return (f"the model replicated on each device does not fit ({replicated.need()}); partitioned over "
                f"{where} it needs {chosen.need()}: no frozen weight crosses nodes"
                + (" after the first step" if chosen.hpz > 1 else ""))
    if chosen.name == "all_nodes":
        node = [f" nor the node-partitioned one with its hpZ copy ({c.need()})" for c in found if c.name == "node"]
        return (f"neither the replicated model ({replicated.need()}){''.join(node)} fits; partitioned over all "
                f"{hardware.world_size} processes it needs {chosen.need()}, and every step gathers the frozen "
                "weights across nodes")
    partitioned = f"; partitioned: {found[-2].need()}" if len(found) > 2 else ""
    return (f"nothing fits without offload (replicated: {replicated.need()}{partitioned}); with the parameters "
            "and optimizer state in host memory it needs "
            f"{chosen.need()}" + (", with the hpZ copy in host memory" if chosen.hpz > 1 else ""))


def _refusal(found: list[Candidate], hardware: Hardware) -> str:
    needs = "; ".join(f"{c.name} {c.need()}" for c in found)
    return (f"no DeepSpeed layout fits this run on {hardware.describe()}: {needs}. Use more devices or nodes, "
            "lower --micro_batch_size or --seq_len, turn on --gradient_checkpointing, or give the real memory "
            "with --gpu_memory / --host_memory (GiB)")


def choose_layout(config, cfg, hardware: Hardware, base: Setup, grad_accum: int = 1,
                  bandwidths: Bandwidths | None = None, notes: tuple[str, ...] = (),
                  prepared: PreparedModel | None = None) -> LayoutChoice:
    """The fastest layout that fits (``chosen`` None and ``reason`` the figures when none does)."""
    prepared = prepared or prepare_model(config, cfg)
    found = candidates(config, cfg, hardware, base, grad_accum, bandwidths, prepared)
    chosen = next((c for c in found if c.fits), None)
    extra = list(notes)
    if chosen is not None and chosen.name != "replicated" and not base.gradient_checkpointing:
        with_checkpointing = estimate_memory(config, cfg, replace(found[0].estimate.setup, gradient_checkpointing=True),
                                             prepared=prepared)
        if with_checkpointing.gpu_total_bytes + hardware.reserve_bytes <= hardware.device_bytes:
            extra.append("with --gradient_checkpointing the replicated layout would fit "
                         f"({_gib(with_checkpointing.gpu_total_bytes + hardware.reserve_bytes)} per device)")
    reason = _why(chosen, found, hardware) if chosen is not None else _refusal(found, hardware)
    return LayoutChoice(hardware, tuple(found), chosen, reason, tuple(extra), bandwidths or Bandwidths())


def require_layout(choice: LayoutChoice) -> LayoutChoice:
    """The choice, or ValueError with its figures when nothing fits (a user error: exit 2)."""
    if choice.chosen is None:
        raise ValueError(choice.reason)
    return choice


# --- the run's hook: train, plan and estimate resolve --ds_config through here -----------------

# The shipped config whose batch keys (all "auto", as in every shipped config) stand for the chosen
# layout's before it is chosen, and whose resolved ZeRO-3 thresholds the candidates share.
def processes_per_node(world_size: int, given: int | None = None) -> int:
    """Processes per node: ``given``, else the launcher's LOCAL_WORLD_SIZE (torchrun, the SLURM
    scripts) or LOCAL_SIZE (deepspeed), else all of them on one node."""
    if given is not None:
        per_node = given
    else:  # a variable left from an enclosing job can name more processes than this run has
        value = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
        per_node = min(int(value), world_size) if value else world_size
    if per_node < 1 or world_size % per_node:
        raise ValueError(f"{per_node} processes per node do not divide the world size {world_size}; every node "
                         "must run the same number of processes (--gpus_per_node / LOCAL_WORLD_SIZE)")
    return per_node


@dataclass(frozen=True)
class RunLayout:
    """What ``fit_layout`` decided for a run."""

    ds_config: dict                  # raw: the given config, or the chosen layout's ("auto" values left)
    facts: object                    # the RunFacts, with the hpZ size for a ZeRO-3 "auto"
    choice: LayoutChoice | None = None   # set for --ds_config auto
    notes: tuple[str, ...] = ()


def fit_layout(raw: dict | None, facts, model_config, adapter, *, seq_len: int, gradient_checkpointing: bool,
               per_node: int, gpu_memory_gib: float | None = None, host_memory_gib: float | None = None,
               bandwidths: Bandwidths | None = None, hardware: Hardware | None = None,
               prepared: PreparedModel | None = None, load_in_4bit: bool = False,
               double_quant: bool = True) -> RunLayout:
    """``raw`` None (--ds_config auto): choose the layout (ValueError with the figures when none
    fits). A given ZeRO-3 config whose zero_hpz_partition_size is "auto": the processes per node
    on several nodes when the hpZ copy fits, else 1. ``adapter``: the LorettaConfig the memory is
    planned for (``prepared``: its meta-device model, when already built). ``facts``: the run's
    RunFacts (world size, batch, precision)."""
    from .distributed.ds_config import load_ds_config, resolve_batch, resolve_ds_config, zero_stage
    from .estimate import setup_from_ds_config

    world = facts.world_size
    if raw is not None:
        zero = raw.get("zero_optimization") or {}
        if zero_stage(raw) != 3 or zero.get("zero_hpz_partition_size") != AUTO_LAYOUT or world == per_node \
                or per_node == 1:
            return RunLayout(raw, facts)
    hardware = hardware or detect_hardware(world // per_node, per_node, gpu_memory_gib, host_memory_gib)
    template = load_ds_config(LAYOUT_TEMPLATE) if raw is None else raw
    _, grad_accum, _ = resolve_batch(template, facts)
    resolved, _ = resolve_ds_config(template, facts)
    base = setup_from_ds_config(resolved, nodes=hardware.nodes, gpus_per_node=per_node, seq_len=seq_len,
                                gradient_checkpointing=gradient_checkpointing, load_in_4bit=load_in_4bit,
                                double_quant=double_quant)
    if raw is None:
        choice = require_layout(choose_layout(model_config, adapter, hardware, replace(base, hpz_partition_size=1),
                                              grad_accum, bandwidths, prepared=prepared))
        return RunLayout(choice.ds_config(), facts, choice, tuple(choice.lines()))
    hpz, note = hpz_size(model_config, adapter, base, hardware, grad_accum, bandwidths, prepared)
    return RunLayout(raw, replace(facts, hpz_partition_size=hpz), None, (note,))


def hpz_size(config, cfg, base: Setup, hardware: Hardware, grad_accum: int = 1,
             bandwidths: Bandwidths | None = None, prepared: PreparedModel | None = None) -> tuple[int, str]:
    """zero_hpz_partition_size for a ZeRO-3 run of ``base`` (stage, offload, thresholds) whose
    config says "auto": the processes per node when the run spans nodes and the hpZ copy fits
    (on the device, or in host memory with parameter offload), else 1; and a note saying why."""
    per_node = hardware.per_node
    if hardware.nodes == 1 or per_node == 1:
        return 1, "zero_hpz_partition_size 1: " + ("one node: every gather stays inside it" if hardware.nodes == 1
                                                   else "one process per node: no node-local copy to share")
    name = "node" if base.offload == "none" else "offload"
    with_hpz = _candidate(name, replace(base, nodes=hardware.nodes, gpus_per_node=per_node,
                                        hpz_partition_size=per_node),
                          hardware, config, cfg, prepared or prepare_model(config, cfg), grad_accum, bandwidths)
    if with_hpz.fits:
        return per_node, (f"zero_hpz_partition_size {per_node} (the processes per node): after the first step the "
                          f"frozen weights are gathered inside each node ({with_hpz.need()} with the hpZ copy)")
    return 1, (f"zero_hpz_partition_size 1: the hpZ copy does not fit ({with_hpz.need()}); every step gathers the "
               "frozen weights across nodes")
