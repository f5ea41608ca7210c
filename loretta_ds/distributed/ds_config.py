"""DeepSpeed JSON configs: read, fill the "auto" values from the run, validate. Pure functions.

A config may leave the values that belong to the run as "auto" (batch sizes, lr, warmup, total
steps, clipping, bf16, ZeRO-3 bucket sizes and persistence thresholds); ``resolve_ds_config``
fills them from a ``RunFacts`` and rejects what DeepSpeed would only reject later, after the model
has loaded (or would silently misread): bad JSON, no optimizer, an unknown ZeRO stage, batch sizes
that do not fit the world size, numbers that contradict the run's flags.

Nothing here imports deepspeed or torch, so every rule is testable without processes.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..file_io import read_json_object

AUTO = "auto"
SUPPORTED_STAGES = (1, 2, 3)
OFFLOAD_DEVICES = ("cpu", "nvme", "none")


@dataclass(frozen=True)
class RunFacts:
    """What the run knows before any model loads; the source of every "auto" value.

    lr / warmup_steps / grad_clip / bf16 / micro_batch_size / grad_accum: None when the flag was not
    given (the config's number, else the default, is then used); a given flag and a number in the
    config must agree. max_trainable_numel / total_trainable_numel: the largest trainable
    tensor and the sum of all of them, frozen_numels: the size of every frozen tensor (all from a
    meta-device model), for ZeRO-3 persistence.
    """

    world_size: int
    lr: float | None
    warmup_steps: int
    total_steps: int
    grad_clip: float | None
    bf16: bool | None
    hidden_size: int
    max_trainable_numel: int
    total_trainable_numel: int
    frozen_numels: tuple[int, ...] = ()
    micro_batch_size: int | None = None
    grad_accum: int | None = None
    cuda_available: bool = False
    default_global_batch: int = 16
    default_lr: float = 1e-2
    default_grad_clip: float = 1.0
    # ZeRO++ hpZ for a ZeRO-3 "auto": the processes of one node on a multi-node run where the
    # secondary copy fits, else 1 (decided by loretta_ds.layout, which knows the memory).
    hpz_partition_size: int = 1


# The configs that ship with the package (the checkout's top-level ds_configs/ links here), so a
# run from any directory, or from a non-editable install, can name one: --ds_config zero3_offload.
SHIPPED_DS_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"


def shipped_ds_config_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_DS_CONFIGS.glob("*.json"))


def find_ds_config(value: str | Path) -> Path:
    """The file ``value`` names: an existing path, else a shipped config's name (with or without
    .json). FileNotFoundError listing the shipped names otherwise."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = path.name[:-len(".json")] if path.name.endswith(".json") else path.name
    if path.parent == Path(".") and name in shipped_ds_config_names():
        return SHIPPED_DS_CONFIGS / f"{name}.json"
    raise FileNotFoundError(f"DeepSpeed config {value} does not exist; pass --ds_config with a JSON file, "
                            f"or the name of a shipped one: {', '.join(shipped_ds_config_names())} "
                            f"(they live in {SHIPPED_DS_CONFIGS})")


def load_ds_config(path: str | Path) -> dict:
    """The JSON object in ``path`` (a file or a shipped config's name, see ``find_ds_config``);
    FileNotFoundError / ValueError (with line and column) otherwise."""
    return read_json_object(find_ds_config(path), "DeepSpeed config", "fix the file (ds_configs/ has working examples)")


# --ds_config auto: the layout is chosen once the model is known (loretta_ds.layout). Until then
# (the batch split the SLURM launcher checks before any process starts, with no torch) the run's
# batch keys come from this template, whose batch keys every layout shares.
AUTO_LAYOUT = "auto"
LAYOUT_TEMPLATE = "zero3"


def load_run_ds_config(name: str) -> dict | None:
    """The DeepSpeed config --ds_config names (None for auto: chosen once the model is known)."""
    return None if name == AUTO_LAYOUT else load_ds_config(name)


def batch_ds_config(name: str) -> dict:
    """A config with the batch keys the run will have (for the batch split before any model)."""
    return load_ds_config(LAYOUT_TEMPLATE if name == AUTO_LAYOUT else name)


def zero_stage(config: dict) -> int:
    """The ZeRO stage of ``config``; a clear error for a missing section or an unknown stage."""
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict):
        raise ValueError("the DeepSpeed config has no 'zero_optimization' section; add one with "
                         f"\"stage\": one of {SUPPORTED_STAGES} (see ds_configs/)")
    stage = zero.get("stage")
    if isinstance(stage, bool) or stage not in SUPPORTED_STAGES:
        hint = (" (stage 0, plain data parallelism, keeps a full optimizer per rank: use zero2.json)"
                if stage == 0 else "")
        raise ValueError(f"unknown ZeRO stage {stage!r} in the DeepSpeed config; use one of "
                         f"{SUPPORTED_STAGES}{hint}")
    return int(stage)


def offloads_optimizer(config: dict) -> bool:
    device = (config.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
    return device in ("cpu", "nvme")


def _number(value, name: str) -> int | None:
    """None for "auto" or absent; the integer otherwise; an error for anything else."""
    if value is None or value == AUTO:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value < 1):
        raise ValueError(f"{name} in the DeepSpeed config must be a positive integer or \"auto\", got {value!r}")
    return int(value)


class BatchSplitError(ValueError):
    """The DeepSpeed config's global batch does not divide over the run's processes: the process
    count (nodes x processes per node) or the batch is what to change."""


def resolve_batch(config: dict, facts: RunFacts) -> tuple[int, int, int]:
    """(micro batch per rank, gradient accumulation, global batch), consistent with the world size.

    A flag and a number in the config must agree (a silent override would train with a batch
    the config's author did not choose); "auto" defers to the flag, else to the default.
    """
    world = facts.world_size
    cfg_micro = _number(config.get("train_micro_batch_size_per_gpu"), "train_micro_batch_size_per_gpu")
    cfg_accum = _number(config.get("gradient_accumulation_steps"), "gradient_accumulation_steps")
    cfg_global = _number(config.get("train_batch_size"), "train_batch_size")
    for flag, flag_value, key, cfg_value in (("--micro_batch_size", facts.micro_batch_size,
                                              "train_micro_batch_size_per_gpu", cfg_micro),
                                             ("--grad_accum", facts.grad_accum,
                                              "gradient_accumulation_steps", cfg_accum)):
        if flag_value is not None and cfg_value is not None and flag_value != cfg_value:
            raise ValueError(f"{flag} {flag_value} contradicts {key}={cfg_value} in the DeepSpeed config; "
                             f"set {key} to \"auto\" or drop the flag")
    micro = facts.micro_batch_size or cfg_micro
    accum = facts.grad_accum or cfg_accum
    if cfg_global is not None:
        chosen = (micro or 1) * (accum or 1)  # the per-process share that was given (the rest is derived)
        # Derive the missing factor from the global batch, as DeepSpeed would.
        if micro is None and accum is None:
            accum = 1
        if micro is None:
            micro = cfg_global // (accum * world)
        elif accum is None:
            accum = cfg_global // (micro * world)
        if micro < 1 or accum < 1 or micro * accum * world != cfg_global:
            fits = cfg_global // chosen if cfg_global % chosen == 0 else None
            raise BatchSplitError(
                f"train_batch_size={cfg_global} in the DeepSpeed config does not divide into "
                f"{world} process(es) x micro batch {micro} x gradient accumulation {accum}"
                + (f" (it fits {fits} process(es){', fewer than ' if fits < world else ', more than '}"
                   f"the {world} of this run)" if fits and fits != world else "")
                + f"; set train_batch_size to \"auto\" (or to {chosen * world} for {world} process(es)), or run on "
                  "a process count that fits")
    if micro is None:
        # Nothing chose a batch: keep the default global batch whatever the process count, so
        # the same command gives the same training on 1 or N processes (when N divides it).
        accum = accum or 1
        fits = facts.default_global_batch % (world * accum) == 0
        micro = facts.default_global_batch // (world * accum) if fits else max(1, facts.default_global_batch // world)
    accum = accum or 1
    return micro, accum, micro * accum * world


def _fill(section: dict, key: str, value, path: str, flag_value=None, flag: str | None = None) -> None:
    """Replace an "auto" (or absent) entry; a number that contradicts a given flag is an error."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif flag is not None and flag_value is not None and current != flag_value:
        named = f"{flag} {flag_value}" if flag.startswith("--") else f"{flag}, {flag_value},"
        raise ValueError(f"{named} contradicts {path}={current!r} in the DeepSpeed config; set it to "
                         "\"auto\" (the trainer fills it from the flags) or make the two agree")


# The optimizers whose state the checkpoints know (distributed/checkpoint.py: Adam's moments).
SUPPORTED_OPTIMIZERS = ("adam", "adamw")


def _fill_optimizer(config: dict, facts: RunFacts) -> float:
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict) or not optimizer.get("type"):
        raise ValueError("the DeepSpeed config has no 'optimizer' section: the trainer builds its optimizer "
                         "from it (over the trainable parameters only). Add e.g. "
                         "{\"type\": \"AdamW\", \"params\": {\"lr\": \"auto\"}}")
    if not isinstance(optimizer["type"], str) or optimizer["type"].lower() not in SUPPORTED_OPTIMIZERS:
        raise ValueError(f"optimizer.type {optimizer['type']!r} in the DeepSpeed config is not supported: the "
                         "checkpoints save and restore Adam's moments (exp_avg, exp_avg_sq); use \"AdamW\" or \"Adam\"")
    params = optimizer.setdefault("params", {})
    if not isinstance(params, dict):
        raise ValueError("optimizer.params in the DeepSpeed config must be an object")
    _fill(params, "lr", facts.lr if facts.lr is not None else facts.default_lr, "optimizer.params.lr",
          facts.lr, "--lr")
    for key, value in (("betas", [0.9, 0.999]), ("eps", 1e-8), ("weight_decay", 0.0)):
        _fill(params, key, value, f"optimizer.params.{key}")
    lr = params["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"optimizer.params.lr must be a positive number or \"auto\", got {lr!r}")
    # DeepSpeed's fused Adam needs CUDA; without it (and without the CPU Adam of an optimizer
    # offload) torch's AdamW does the same update.
    if (optimizer["type"].lower() in ("adam", "adamw") and not facts.cuda_available
            and not offloads_optimizer(config)):
        params.setdefault("torch_adam", True)
    return float(lr)


def default_warmup_steps(total_steps: int) -> int:
    """Warmup when neither --warmup_steps nor the config says: 5% of the run, at least one step."""
    return max(1, round(0.05 * total_steps))


def _fill_scheduler(config: dict, facts: RunFacts, lr: float) -> None:
    """Fill the schedule's "auto" values. A number in the config that contradicts the run (its
    steps, its lr, an explicit --warmup_steps) is an error: silently, the number would win and
    run_config.json would record a schedule that did not run."""
    scheduler = config.get("scheduler")
    if scheduler is None:
        if facts.warmup_steps:
            raise ValueError(f"--warmup_steps {facts.warmup_steps} has no effect: the DeepSpeed config has no "
                             "'scheduler' section (the lr stays constant); add one (ds_configs/zero3_offload.json "
                             "has a WarmupCosineLR) or drop the flag")
        return
    if not isinstance(scheduler, dict) or not scheduler.get("type"):
        raise ValueError("'scheduler' in the DeepSpeed config needs a 'type' (e.g. WarmupCosineLR)")
    params = scheduler.setdefault("params", {})
    kind = scheduler["type"]
    # DeepSpeed's warmup schedules need at least 2 warmup steps.
    warmup = max(2, facts.warmup_steps if facts.warmup_steps is not None else default_warmup_steps(facts.total_steps))
    steps_flag = "the run's step count (--max_steps, or --epochs over the data)"
    # key -> (value for "auto", the run's value a number must equal or None, what sets it)
    warmup_entry = (warmup, warmup if facts.warmup_steps is not None else None, "--warmup_steps")
    total_entry = (facts.total_steps, facts.total_steps, steps_flag)
    max_lr_entry = (lr, lr, "the run's lr (--lr, or optimizer.params.lr)")
    # Warmup starts above zero: DeepSpeed's first step runs at the warmup's start value, so a start
    # of 0 wastes it. With a start of 1/(W+1) the W warmup steps run at 1/(W+1) ... W/(W+1) of the
    # peak (linear), and the peak follows.
    start = 1.0 / (warmup + 1)
    known = {
        "WarmupCosineLR": {"warmup_num_steps": warmup_entry, "total_num_steps": total_entry,
                           "warmup_min_ratio": (start, None, None)},
        "WarmupDecayLR": {"warmup_num_steps": warmup_entry, "total_num_steps": total_entry,
                          "warmup_max_lr": max_lr_entry, "warmup_min_lr": (lr * start, None, None)},
        "WarmupLR": {"warmup_num_steps": warmup_entry, "warmup_max_lr": max_lr_entry,
                     "warmup_min_lr": (lr * start, None, None)},
    }
    for key, (value, must_equal, flag) in known.get(kind, {}).items():
        _fill(params, key, value, f"scheduler.params.{key}", must_equal, flag)
    _check_schedule_numbers(params)


# A schedule's shares of the peak lr, and its lrs: a NaN or a negative value runs (DeepSpeed does not
# check them) with an lr of 0 or NaN for most of the steps.
_SCHEDULE_RATIOS = ("warmup_min_ratio", "cos_min_ratio")
_SCHEDULE_LRS = ("warmup_min_lr", "warmup_max_lr")


def _check_schedule_numbers(params: dict) -> None:
    for key in (*_SCHEDULE_RATIOS, *_SCHEDULE_LRS):
        if key not in params:
            continue
        value = params[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if key in _SCHEDULE_RATIOS and not (number and 0 <= value <= 1):
            raise ValueError(f"scheduler.params.{key} in the DeepSpeed config must be a number in [0, 1] (a share "
                             f"of the peak lr), got {value!r}; set it to e.g. 0.0001, or remove it for DeepSpeed's "
                             "default")
        if key in _SCHEDULE_LRS and not (number and value >= 0):
            raise ValueError(f"scheduler.params.{key} in the DeepSpeed config must be a learning rate >= 0, got "
                             f"{value!r}; set it to \"auto\" (filled from --lr) or to a number")


def scheduled_warmup(config: dict) -> int:
    """The warmup steps a resolved config runs (0 without a warmup schedule)."""
    params = (config.get("scheduler") or {}).get("params") or {}
    steps = params.get("warmup_num_steps", 0)
    return int(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) else 0


def _fill_precision(config: dict, facts: RunFacts, stage: int) -> None:
    bf16 = config.setdefault("bf16", {})
    _fill(bf16, "enabled", bool(facts.bf16), "bf16.enabled", facts.bf16, "--bf16")
    if bf16["enabled"] and stage in (1, 2):
        # ZeRO-1/2 in bf16 skips a step with non-finite gradients only when asked to; the trainer
        # counts such steps as bad steps (ZeRO-3 always checks).
        bf16.setdefault("check_grad_overflow", True)
    fp16 = config.get("fp16")
    if isinstance(fp16, dict) and fp16.get("enabled") == AUTO:
        fp16["enabled"] = False
    if isinstance(fp16, dict) and fp16.get("enabled") is True and not facts.cuda_available:
        raise ValueError("the DeepSpeed config enables fp16, which needs CUDA (no GPU is visible here); set "
                         "fp16.enabled to false (or \"auto\") in the config, or train in --bf16")
    if bf16["enabled"] and isinstance(fp16, dict) and fp16.get("enabled") is True:
        raise ValueError("the DeepSpeed config enables both bf16 and fp16; keep one")


def _check_nvme_offload(key: str, offload: dict, stage: int) -> None:
    """NVMe offload (ZeRO-Infinity) exists for stage 3 only, into a directory that must exist: found
    out here, not by DeepSpeed minutes later after the model loaded (or, for stage 2, ignored)."""
    if stage != 3:
        raise ValueError(f"zero_optimization.{key}.device \"nvme\" needs ZeRO stage 3 (DeepSpeed offloads to "
                         f"NVMe only there; stage {stage} would train without offload); use stage 3 or "
                         "device \"cpu\"")
    path = offload.get("nvme_path") if isinstance(offload, dict) else None
    if not path:
        raise ValueError(f"zero_optimization.{key} offloads to nvme but has no nvme_path; set it to a directory "
                         "on a local NVMe drive")
    if not Path(path).is_dir() or not os.access(path, os.W_OK):
        raise ValueError(f"zero_optimization.{key}.nvme_path {path} is not a writable directory; create it on a "
                         "local NVMe drive (every node needs its own) or offload to \"cpu\"")


def _fill_zero(config: dict, facts: RunFacts, stage: int) -> list[str]:
    """ZeRO buckets from the hidden size; ZeRO-3 persistence so every trainable tensor stays whole."""
    zero = config["zero_optimization"]
    notes: list[str] = []
    for key in ("offload_param", "offload_optimizer"):
        offload = zero.get(key)
        if offload is not None:
            device = offload.get("device", "none") if isinstance(offload, dict) else offload
            if device not in OFFLOAD_DEVICES:
                raise ValueError(f"zero_optimization.{key}.device must be one of {OFFLOAD_DEVICES}, got {device!r}")
            if device == "nvme":
                _check_nvme_offload(key, offload, stage)
    if stage != 3 and (zero.get("offload_param") or {}).get("device", "none") != "none":
        raise ValueError("zero_optimization.offload_param needs ZeRO stage 3 (only stage 3 partitions "
                         "parameters); use ds_configs/zero3_offload.json or remove offload_param")
    hidden = facts.hidden_size
    _fill(zero, "reduce_bucket_size", hidden * hidden, "zero_optimization.reduce_bucket_size")
    if "zero_hpz_partition_size" in zero:
        _fill(zero, "zero_hpz_partition_size", facts.hpz_partition_size if stage == 3 else 1,
              "zero_optimization.zero_hpz_partition_size")
        hpz = _number(zero["zero_hpz_partition_size"], "zero_optimization.zero_hpz_partition_size")
        if hpz > 1 and (stage != 3 or facts.world_size % hpz):
            raise ValueError(f"zero_optimization.zero_hpz_partition_size {hpz} needs ZeRO stage 3 and a world size "
                             f"it divides (this run: stage {stage}, {facts.world_size} process(es)); set it to the "
                             "processes per node, or to \"auto\"")
    if stage == 3:
        _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * hidden * hidden),
              "zero_optimization.stage3_prefetch_bucket_size")
        # Trainable tensors (TT cores, norms) must never be partitioned: each step would gather
        # thousands of tiny tensors, and rank 0 writes them whole into checkpoints. DeepSpeed keeps
        # a parameter whole when its numel is at most this threshold (and the model-wide budget
        # allows); frozen base weights are far larger and stay partitioned. Small frozen tensors
        # (the norms when they do not train) stay whole too: partitioned, every forward gathers
        # each one together with the next weight through DeepSpeed's coalesced path, which copies
        # that weight twice more (measured: +40 all-gathered norms and ~8 ms per step at hidden
        # 768, 2 layers). So "auto" is at least 10 x hidden, transformers' value for it.
        need = facts.max_trainable_numel
        _fill(zero, "stage3_param_persistence_threshold", max(need, 10 * hidden),
              "zero_optimization.stage3_param_persistence_threshold")
        threshold = _number(zero["stage3_param_persistence_threshold"], "stage3_param_persistence_threshold")
        if threshold < need:
            notes.append(f"stage3_param_persistence_threshold raised from {threshold} to {need} (the largest "
                         "trainable tensor) so that every trainable tensor stays whole on each rank")
            threshold = zero["stage3_param_persistence_threshold"] = need
        # The budget is spent in creation order: the frozen tensors under the threshold persist
        # while the base model loads, before the adapter exists, so it must cover them as well.
        persisted = facts.total_trainable_numel + sum(n for n in facts.frozen_numels if n <= threshold)
        budget = zero.get("stage3_model_persistence_threshold", AUTO)
        if budget == AUTO:
            zero["stage3_model_persistence_threshold"] = max(persisted, 10 ** 6)
        elif _number(budget, "stage3_model_persistence_threshold") < persisted:
            zero["stage3_model_persistence_threshold"] = persisted
            notes.append(f"stage3_model_persistence_threshold raised from {budget} to {persisted} (all "
                         "trainable parameters and the frozen ones under the persistence threshold)")
    return notes


def _find_auto(value, path: str = "") -> list[str]:
    if value == AUTO:
        return [path or "<root>"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _find_auto(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _find_auto(v, f"{path}[{i}]")]
    return []


def resolve_ds_config(config: dict, facts: RunFacts,
                      steps_for_batch: Callable[[int, int], int] | None = None) -> tuple[dict, list[str]]:
    """A copy of ``config`` with every "auto" filled from ``facts``, validated; plus notes to log.

    ``steps_for_batch(micro batch, accumulation)``, when given, is the run's number of steps once
    the batch split is known (a run of N epochs takes as many steps as its batches fill); else
    ``facts.total_steps``.

    Raises ValueError for what would fail (or silently misbehave) later: unknown ZeRO stage, no
    optimizer, batch sizes that do not fit the world size, numbers contradicting flags, "auto"
    in a place the trainer cannot fill.
    """
    if facts.world_size < 1:
        raise ValueError(f"world size must be >= 1, got {facts.world_size}")
    config = copy.deepcopy(config)
    stage = zero_stage(config)
    micro, accum, global_batch = resolve_batch(config, facts)
    if steps_for_batch is not None:
        facts = dataclasses.replace(facts, total_steps=steps_for_batch(micro, accum))
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum
    config["train_batch_size"] = global_batch
    lr = _fill_optimizer(config, facts)
    _fill_scheduler(config, facts, lr)
    _fill(config, "gradient_clipping", facts.grad_clip if facts.grad_clip is not None else facts.default_grad_clip,
          "gradient_clipping", facts.grad_clip, "--grad_clip")
    clip = config["gradient_clipping"]
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0 or math.isnan(clip):
        raise ValueError(f"gradient_clipping must be a number >= 0 or \"auto\", got {clip!r}")
    _fill_precision(config, facts, stage)
    notes = _fill_zero(config, facts, stage)
    # The trainer prints its own progress; DeepSpeed's every-N-steps lines would interleave with it.
    config.setdefault("steps_per_print", 10 ** 9)
    config.setdefault("wall_clock_breakdown", False)
    left = _find_auto(config)
    if left:
        raise ValueError(f"the DeepSpeed config has \"auto\" at {', '.join(left)}, which the trainer does not "
                         "fill; put a value there")
    return config, notes


def batch_summary(config: dict) -> str:
    return (f"global batch {config['train_batch_size']} = micro batch "
            f"{config['train_micro_batch_size_per_gpu']} x grad accum "
            f"{config['gradient_accumulation_steps']} x {config['train_batch_size'] // (config['train_micro_batch_size_per_gpu'] * config['gradient_accumulation_steps'])} process(es)")
