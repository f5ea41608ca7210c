"""A training run's plan: every check a user can fail and every value the run resolves, before
any model weight loads and before anything is written.

``build_plan`` reads the DeepSpeed config, the model's config (never its weights), a meta-device
copy of the model with the adapter (for target names and tensor sizes), the tokenizer and the
data; it fills the config's "auto" values and fixes the number of steps. ``choose_resume`` then
checks the output directory against the run (loretta_ds.run.contents: whose files are there) and
picks the checkpoint to continue from. The run config is only read: what is resolved lives in the
``Plan`` (and ``Plan.settings`` is what run_config.json records as "train").
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .run import contents as guards
from .adapters import inject, trainable_parameter_names
from .adapters.config import AdapterSettings, LorettaConfig
from .distributed import checkpoint as ckpt
from .distributed.ds_config import RunFacts, resolve_ds_config, scheduled_warmup, zero_stage
from .quantization import QuantSpec, require_bitsandbytes
from .run_config import (DEFAULT_EPOCHS, DEFAULT_GLOBAL_BATCH, DEFAULT_GRAD_CLIP, DEFAULT_LR, LENGTH_KEYS,
                         TrainConfig, identity)
from .run.directory import RunDir, RunRecord, read_run_record


@dataclass(frozen=True)
class LoraBaseline:
    """The LoRA baseline (--method lora): stock PEFT LoRA on the targets rep would adapt."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str]

    @classmethod
    def from_settings(cls, settings: AdapterSettings) -> "LoraBaseline":
        return cls(settings.r, settings.alpha, settings.dropout, settings.lora_targets())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


def adapter_of(cfg: TrainConfig) -> LorettaConfig | LoraBaseline:
    """What the run injects: a LorettaConfig (rep, adp) or the LoRA baseline."""
    if cfg.method == "lora":
        return LoraBaseline.from_settings(cfg.adapter)
    return cfg.adapter.loretta(cfg.method)


@dataclass(frozen=True)
class ResumePoint:
    """Where the run starts, decided by ``choose_resume`` from OUTPUT_DIR (read only)."""

    checkpoint: ckpt.CheckpointInfo | None = None  # continue from it; None: from step 0
    state: dict | None = None  # its trainer_state.json (step, data position, ...)
    start_over: guards.Survey | None = None  # --overwrite_output_dir: the earlier run's files to remove
    # run_config.json's "resumed_from" when this run started from a checkpoint of a run with other
    # settings (--resume PATH --allow_config_change): the checkpoint, its step, {key: [there, now]}.
    resumed_from: dict | None = None
    finished: bool = False  # this exact run already finished there: nothing to do

    @property
    def step(self) -> int:
        return int(self.state["step"]) if self.state is not None else 0


@dataclass(frozen=True)
class Plan:
    """Everything resolved before the model loads; the training stages only read it."""

    cfg: TrainConfig  # what the user asked for (read only)
    model_path: str  # local directory or hub id, as loaded
    model_config: object
    tokenizer: object
    data: object  # loretta_ds.data.prepare.PreparedData
    adapter: LorettaConfig | LoraBaseline
    ds_config: dict  # every "auto" filled: the DeepSpeed config as it runs
    zero_stage: int
    micro_batch_size: int
    grad_accum: int
    global_batch: int
    total_steps: int
    warmup_steps: int
    lr: float
    grad_clip: float
    bf16: bool
    attn: str
    trainable_shapes: dict[str, tuple[int, ...]]
    world_size: int
    notes: list[str] = field(default_factory=list)  # adjustments made to the ds_config
    quantization: QuantSpec | None = None  # --load_in_4bit: how the frozen base is quantized
    warnings: list[str] = field(default_factory=list)  # settings that run but are probably not meant
    resume: ResumePoint = field(default_factory=ResumePoint)
    layout: dict | None = None  # --ds_config auto: the layout chosen, why, and the alternatives

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.cfg.output_dir)

    @property
    def zero3(self) -> bool:
        return self.zero_stage == 3

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def packing(self) -> bool:
        return self.cfg.packing

    @property
    def targets(self) -> list[str]:
        return list(self.adapter.target_modules)

    @property
    def settings(self) -> dict:
        """run_config.json's "train": every setting as it runs (the flags, with the values the plan
        resolved in place of their defaults), plus the global batch."""
        return {**self.cfg.flat(), "lr": self.lr, "micro_batch_size": self.micro_batch_size,
                "grad_accum": self.grad_accum, "bf16": self.bf16, "warmup_steps": self.warmup_steps,
                "max_steps": self.total_steps, "grad_clip": self.grad_clip, "global_batch": self.global_batch}

    def record(self, finished: bool = False, **final) -> RunRecord:
        """run_config.json of this run (``final``: final_step, bad_steps, final_eval, wall_time_s)."""
        adapter = self.adapter.to_dict()
        return RunRecord(method=self.cfg.method, model=self.model_path, model_name=self.cfg.model,
                         loretta=adapter if isinstance(self.adapter, LorettaConfig) else None,
                         lora=adapter if isinstance(self.adapter, LoraBaseline) else None,
                         dtype="bfloat16" if self.bf16 else "float32", train=self.settings,
                         world_size=self.world_size, global_batch=self.global_batch, zero_stage=self.zero_stage,
                         attn=self.attn, ds_config=self.ds_config, finished=finished,
                         resumed_from=self.resume.resumed_from, layout=self.layout, **final)


def planned_adapter(cfg: TrainConfig, adapter: LorettaConfig | LoraBaseline) -> LorettaConfig:
    """The adapter the memory plan counts: LoRETTA's own; for the LoRA baseline, rep on the same
    targets (the plan models LoRETTA layers; either adapter is a fraction of a percent of the base)."""
    return adapter if isinstance(adapter, LorettaConfig) else cfg.adapter.loretta("rep")


def resolve_attention(choice: str) -> str:
    """auto: flash_attention_2 when flash-attn imports and a CUDA device is present, else sdpa."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    has_cuda = torch.cuda.is_available()
    if choice == "auto":
        return "flash_attention_2" if has_flash and has_cuda else "sdpa"
    if choice == "flash_attention_2" and not has_flash:
        raise ValueError("--attn flash_attention_2 needs the flash-attn package, which is not installed: "
                         "pip install flash-attn (CUDA only), or use --attn sdpa")
    if choice == "flash_attention_2" and not has_cuda:
        raise ValueError("--attn flash_attention_2 needs a CUDA device, and none is visible; use --attn sdpa")
    return choice


def attach_adapter(model: torch.nn.Module, adapter: LorettaConfig | LoraBaseline) -> tuple[torch.nn.Module, list[str]]:
    """(adapted model, its trainable parameter names): LoRETTA injected in place, or PEFT LoRA."""
    if isinstance(adapter, LoraBaseline):
        from peft import get_peft_model

        model = get_peft_model(model, adapter.peft_config())
        return model, [n for n, p in model.named_parameters() if p.requires_grad]
    inject(model, adapter)
    return model, trainable_parameter_names(model)


def parameter_shapes(model_config, adapter: LorettaConfig | LoraBaseline) -> tuple[dict[str, tuple[int, ...]], list[int]]:
    """Name -> shape of every trainable tensor, and the numel of every frozen one, from a
    meta-device model with the adapter.

    Validates the adapter settings against the model's layers (unknown targets, impossible TT
    shapes) in seconds, even for 70B, without loading a weight.
    """
    from .models import meta_model

    model, names = attach_adapter(meta_model(model_config), adapter)
    params = dict(model.named_parameters())
    trainable = set(names)
    frozen = [param.numel() for name, param in params.items() if name not in trainable]
    return {name: tuple(params[name].shape) for name in names}, frozen


# Above this share of trainable parameters the adapter is no longer parameter-efficient: LoRETTA's
# default settings train about 0.01-0.1% of a LLaMA-2 (1% of the tiny built-in model).
TRAINABLE_SHARE_WARNING = 0.10


def adapter_size_warnings(cfg: TrainConfig, hidden_size: int, trainable: int, frozen: int) -> list[str]:
    """Settings that are valid but almost certainly a typo: a rank beyond the layer width, or an
    adapter as large as the model."""
    found = []
    share = trainable / max(1, trainable + frozen)
    if share > TRAINABLE_SHARE_WARNING:
        knob = {"rep": "--tensor_rank or --r", "adp": "--tensor_rank or --bottleneck", "lora": "--r"}[cfg.method]
        found.append(f"{share:.0%} of the model's parameters are trainable ({trainable:,} of {trainable + frozen:,}); "
                     f"a parameter-efficient adapter trains a small fraction: lower {knob}")
    r = cfg.adapter.r
    if cfg.method in ("rep", "lora") and r > hidden_size:
        found.append(f"--r {r} is above the model's hidden size {hidden_size}: a rank beyond the layer width "
                     f"adds parameters but no capacity; use --r {hidden_size} or less")
    return found


def schedule_warnings(cfg: TrainConfig, warmup_steps: int, total_steps: int) -> list[str]:
    """The lr schedule as it runs, where it is not what the flags say."""
    found = []
    if cfg.warmup_steps is not None and warmup_steps != cfg.warmup_steps:
        found.append(f"--warmup_steps {cfg.warmup_steps} runs as {warmup_steps} warmup steps: DeepSpeed's warmup "
                     f"schedules take at least 2")
    if cfg.warmup_steps is not None and warmup_steps >= total_steps:
        found.append(f"the warmup ({warmup_steps} steps) is as long as the run or longer ({total_steps} steps): "
                     "the lr never reaches its peak (--lr); lower --warmup_steps")
    return found


def epoch_span_warnings(cfg: TrainConfig, data, micro: int, accum: int, world_size: int) -> list[str]:
    """A global batch larger than the training set: every step spans more than one epoch, so an
    example is seen twice within one step and --epochs no longer counts passes."""
    global_batch = micro * accum * world_size
    units = packed_row_count(data, micro, world_size, cfg.seed) if cfg.packing else len(data.train)
    if global_batch <= units:
        return []
    what = "packed rows" if cfg.packing else "examples"
    return [f"the global batch ({global_batch} = micro batch {micro} x grad accum {accum} x {world_size} "
            f"process(es)) is larger than the training set ({units} {what}): every step spans more than one "
            f"epoch and repeats examples within the step; lower --micro_batch_size / --grad_accum (or the "
            f"ds_config's train_batch_size) to a global batch of at most {units}, or add data"]


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError, TypeError) as err:
        raise FileNotFoundError(f"cannot load a tokenizer from {model_path} ({str(err).splitlines()[0][:200]}); "
                                "the model directory needs its tokenizer files (tokenizer.json, or "
                                "tokenizer.model + tokenizer_config.json): copy them from the base model") from None


def run_facts(cfg: TrainConfig, world_size: int, model_config, numels: list[int], frozen_numels: list[int]) -> RunFacts:
    """What fills the DeepSpeed config's "auto" values: the flags, the model's and adapter's sizes."""
    return RunFacts(world_size=world_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=0,
                    grad_clip=cfg.grad_clip, bf16=cfg.bf16, hidden_size=model_config.hidden_size,
                    max_trainable_numel=max(numels), total_trainable_numel=sum(numels),
                    frozen_numels=tuple(frozen_numels), micro_batch_size=cfg.micro_batch_size,
                    grad_accum=cfg.grad_accum, cuda_available=torch.cuda.is_available(),
                    default_lr=DEFAULT_LR, default_global_batch=DEFAULT_GLOBAL_BATCH,
                    default_grad_clip=DEFAULT_GRAD_CLIP)


def fit_run_layout(cfg: TrainConfig, raw_ds_config: dict | None, facts: RunFacts, model_config,
                   adapter: LorettaConfig | LoraBaseline, per_node: int, bandwidths=None, prepared=None):
    """--ds_config auto picks the layout here; a ZeRO-3 config's hpZ "auto" is sized here
    (loretta_ds.layout.fit_layout)."""
    from .layout import fit_layout

    return fit_layout(raw_ds_config, facts, model_config, planned_adapter(cfg, adapter), seq_len=cfg.seq_len,
                             gradient_checkpointing=cfg.gradient_checkpointing, per_node=per_node,
                             gpu_memory_gib=cfg.gpu_memory, host_memory_gib=cfg.host_memory, bandwidths=bandwidths,
                             prepared=prepared, load_in_4bit=cfg.load_in_4bit,
                             double_quant=cfg.bnb_4bit_use_double_quant)


def plan_layout_only(cfg: TrainConfig, world_size: int, per_node: int | None = None, bandwidths=None):
    """The DeepSpeed layout of a run from the model's shapes alone (a LLaMA-2 preset works; no data,
    tokenizer or weights): (the fitted layout, the DeepSpeed config as it would run, notes)."""
    from .distributed.ds_config import load_run_ds_config
    from .layout import processes_per_node
    from .models import load_model_config

    per_node = processes_per_node(world_size, per_node)
    raw_ds_config = load_run_ds_config(cfg.ds_config)
    from .estimate import prepare_model

    model_config = load_model_config(cfg.model)
    adapter = adapter_of(cfg)
    prepared = None
    if isinstance(adapter, LorettaConfig):  # one meta-device model for the sizes and the memory plan
        prepared = prepare_model(model_config, adapter)
        trainable = set(trainable_parameter_names(prepared.model))
        params = dict(prepared.model.named_parameters())
        numels = [p.numel() for name, p in params.items() if name in trainable]
        frozen_numels = [p.numel() for name, p in params.items() if name not in trainable]
    else:
        shapes, frozen_numels = parameter_shapes(model_config, adapter)
        numels = [math.prod(shape) for shape in shapes.values()]
    facts = run_facts(cfg, world_size, model_config, numels, frozen_numels)
    facts = dataclasses.replace(facts, total_steps=cfg.max_steps or 1)
    fitted = fit_run_layout(cfg, raw_ds_config, facts, model_config, adapter, per_node, bandwidths, prepared)
    ds_config, notes = resolve_ds_config(fitted.ds_config, fitted.facts)
    return fitted, ds_config, [*fitted.notes, *notes]


def check_quantized_run(cfg: TrainConfig) -> None:
    """--load_in_4bit: refuse, before anything loads, what cannot work on a 4-bit base."""
    require_bitsandbytes()
    if cfg.verify_frozen:
        raise ValueError("--verify_frozen compares the frozen weights with the checkpoint bit for bit, but a 4-bit "
                         "base holds quantized codes, not those weights; drop --verify_frozen or --load_in_4bit")


def build_plan(cfg: TrainConfig, world_size: int, per_node: int | None = None) -> Plan:
    """Check and resolve everything about the run (``cfg`` is only read). ``per_node``: processes
    per node (default: the launcher's, see loretta_ds.layout.processes_per_node)."""
    from .distributed.ds_config import load_run_ds_config
    from .layout import processes_per_node

    if cfg.load_in_4bit:
        check_quantized_run(cfg)
    per_node = processes_per_node(world_size, per_node)
    raw_ds_config = load_run_ds_config(cfg.ds_config)  # None for auto: chosen below
    if raw_ds_config is not None:
        zero_stage(raw_ds_config)
    # A mistyped data path or name is the commonest error: reported in seconds, before the model's
    # config and classes are read. The parsed specs are what the data preparation reads.
    from .data.files import parse_dataset_specs

    specs = parse_dataset_specs(list(cfg.dataset) or None)
    eval_specs = parse_dataset_specs(list(cfg.eval_dataset)) if cfg.eval_dataset else None
    attn = resolve_attention(cfg.attn)
    from .run.reporting import check_reporter

    check_reporter(cfg.report_to)
    from .models import check_model_type, resolve_model

    model_path, model_config = resolve_model(cfg.model, weights=True)

    check_model_type(model_config)
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None and cfg.seq_len > max_positions:
        raise ValueError(f"--seq_len {cfg.seq_len} is longer than the model's maximum of {max_positions} "
                         "positions (max_position_embeddings); lower --seq_len")
    adapter = adapter_of(cfg)
    shapes, frozen_numels = parameter_shapes(model_config, adapter)
    numels = [math.prod(shape) for shape in shapes.values()]

    from .data.prepare import prepare_data

    tokenizer = load_tokenizer(model_path)
    data = prepare_data(tokenizer, specs, cfg.format, cfg.seq_len, cfg.seed, eval_specs=eval_specs,
                        eval_fraction=cfg.eval_split, chat_template=cfg.chat_template, too_long=cfg.too_long)

    # The ds_config's "auto" values come from the flags, the model and the data. The number of
    # steps of --epochs depends on the batch split, which the config resolves first.
    facts = run_facts(cfg, world_size, model_config, numels, frozen_numels)

    @functools.cache
    def steps_for_batch(micro: int, accum: int) -> int:
        per_step = micro * world_size
        if len(data.train) < per_step:
            raise ValueError(f"the training set has {len(data.train)} examples, fewer than one micro batch on "
                             f"every process needs ({micro} x {world_size}); add data or lower --micro_batch_size")
        if cfg.max_steps:
            return cfg.max_steps
        # Packed, a micro batch holds rows: an epoch is as many steps as epoch 0's rows fill.
        units = packed_row_count(data, micro, world_size, cfg.seed) if cfg.packing else len(data.train)
        steps_per_epoch = max(1, units // per_step // accum)
        return max(1, math.ceil((cfg.epochs or DEFAULT_EPOCHS) * steps_per_epoch))

    fitted = fit_run_layout(cfg, raw_ds_config, facts, model_config, adapter, per_node)
    stage = zero_stage(fitted.ds_config)
    ds_config, notes = resolve_ds_config(fitted.ds_config, fitted.facts, steps_for_batch=steps_for_batch)
    notes = [*fitted.notes, *notes]
    # What runs is the resolved config: the plan (and run_config.json) take its values, not the flags'.
    micro, accum = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    bf16 = bool(ds_config["bf16"]["enabled"])
    quantization = (QuantSpec.for_run(cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant,
                                      cfg.bnb_4bit_compute_dtype, bf16) if cfg.load_in_4bit else None)
    total_steps, warmup_steps = steps_for_batch(micro, accum), scheduled_warmup(ds_config)
    warnings = adapter_size_warnings(cfg, model_config.hidden_size, sum(numels), sum(frozen_numels))
    warnings += schedule_warnings(cfg, warmup_steps, total_steps)
    warnings += epoch_span_warnings(cfg, data, micro, accum, world_size)
    return Plan(cfg=cfg, model_path=model_path, model_config=model_config, tokenizer=tokenizer, data=data,
                adapter=adapter, ds_config=ds_config, zero_stage=stage, micro_batch_size=micro, grad_accum=accum,
                global_batch=ds_config["train_batch_size"], total_steps=total_steps,
                warmup_steps=warmup_steps, lr=float(ds_config["optimizer"]["params"]["lr"]),
                grad_clip=float(ds_config["gradient_clipping"]), bf16=bf16, quantization=quantization,
                attn=attn, trainable_shapes=shapes, world_size=world_size, notes=notes,
                layout=fitted.choice.to_dict() if fitted.choice is not None else None, warnings=warnings)


def make_batches(plan: Plan, rank: int):
    """This rank's training batches (loretta_ds.data's sharded, seeded, resumable order)."""
    from .data.batches import ShardedBatches
    from .data.packing import PackedBatches

    seed = plan.cfg.seed
    if plan.packing:
        return PackedBatches(plan.data.train, plan.micro_batch_size, rank, plan.world_size, seed=seed,
                             pad_id=plan.data.pad_id, seq_len=plan.data.seq_len)
    return ShardedBatches(plan.data.train, plan.micro_batch_size, rank, plan.world_size, seed=seed,
                          pad_id=plan.data.pad_id)


def packed_row_count(data, micro_batch_size: int, world_size: int, seed: int) -> int:
    """Rows of epoch 0 once packed (ValueError when they cannot fill one step)."""
    from .data.packing import PackedBatches

    batches = PackedBatches(data.train, micro_batch_size, 0, world_size, seed=seed, pad_id=data.pad_id,
                            seq_len=data.seq_len)
    return len(batches.epoch_rows(0))


def compare_with_source_run(plan: Plan, checkpoint: ckpt.CheckpointInfo, log: Callable[[str], None]) -> dict:
    """--resume PATH to another run's checkpoint: the settings of that run that differ from this
    one's, {key: [there, now]} ({"unknown": its run_config.json} when that cannot be read), compared
    as --resume auto compares a run with its continuation.

    Only a change of length continues a run as it was; any other (lr, data, adapter, ...) makes a
    run that trained partly under one setting and partly under another, so it needs
    --allow_config_change, and then it is said and recorded. A checkpoint whose run config is not
    beside it (OTHER/run_config.json) cannot be compared: it needs the opt-in too.
    """
    cfg = plan.cfg
    source_run = checkpoint.path.resolve().parent.parent
    run_file = RunDir(source_run).run_config
    try:
        record = read_run_record(source_run)
        theirs = identity(record.train) if record is not None else None
    except (OSError, ValueError):
        theirs = None
    if theirs is None:
        if not cfg.allow_config_change:
            raise ValueError(f"--resume {checkpoint.path}: its run's settings ({run_file}) are missing or unreadable, "
                             "so whether this run continues it unchanged cannot be checked; pass "
                             "--allow_config_change true to resume from it anyway")
        log(f"resuming from {checkpoint.path}: its run's settings ({run_file}) are unknown (--allow_config_change)")
        return {"unknown": str(run_file)}
    mine = identity(plan.settings)
    changes = {k: [theirs.get(k), mine[k]] for k in mine if mine[k] != theirs.get(k)}
    listed = "; ".join(f"{k}: {there!r} there, {now!r} now" for k, (there, now) in changes.items())
    beyond_length = set(changes) - set(LENGTH_KEYS)
    if beyond_length and not cfg.allow_config_change:
        raise ValueError(f"--resume {checkpoint.path} is a checkpoint of {source_run}, a run with other settings "
                         f"({listed}); continuing it would train partly under those and partly under these. "
                         "Pass the same settings to continue it, or --allow_config_change true to resume "
                         "under the new ones (the differences are then recorded in run_config.json)")
    if changes:
        log(f"resuming from {checkpoint.path} (step {checkpoint.step}) of {source_run}, whose settings differ "
            f"({listed}): steps 1-{checkpoint.step} trained under that run's settings, steps "
            f"{checkpoint.step + 1}-{plan.total_steps} train under this run's (the lr schedule is this run's: "
            f"{plan.total_steps} steps, {plan.warmup_steps} of warmup)")
    return changes


def _previous_run(cfg: TrainConfig, run_dir: RunDir) -> RunRecord | None:
    """The record of the run OUTPUT_DIR already holds, if any."""
    try:
        return read_run_record(run_dir)
    except ValueError:
        if cfg.overwrite_output_dir:
            return None  # a damaged record of a run that is being started over
        raise ValueError(f"{run_dir.run_config} is not a valid run record (not JSON, or not "
                         "written by this trainer); this directory holds a damaged run: choose another "
                         "--output_dir, or pass --overwrite_output_dir to start over there") from None


def _new_length(plan: Plan, previous: RunRecord | None) -> tuple[int, int] | None:
    """(steps there, steps now) when this run continues the one OUTPUT_DIR holds to another length;
    refuses a run there with any other setting changed."""
    if previous is None:
        return None
    mine, theirs = identity(plan.settings), identity(previous.train)
    changed = [k for k in mine if mine[k] != theirs.get(k)]
    if set(changed) - set(LENGTH_KEYS):
        diffs = [f"{k}: {theirs.get(k)!r} there, {mine[k]!r} now" for k in changed]
        raise ValueError(f"{plan.run_dir} holds another run with a different config ({'; '.join(diffs)}). "
                         "Only its length (--max_steps, --epochs, --warmup_steps) may change when it is "
                         "continued; for other settings choose another --output_dir (and --resume PATH "
                         "--allow_config_change true to start from one of its checkpoints), or pass "
                         "--overwrite_output_dir to start over there.")
    return (theirs.get("max_steps"), plan.total_steps) if changed else None


def _newest_of_this_run(plan: Plan, complete: list, torn: list, log: Callable[[str], None]
                        ) -> ckpt.CheckpointInfo | None:
    """--resume auto: the newest complete checkpoint in OUTPUT_DIR (None: none there). Refuses a
    directory whose every checkpoint is damaged; interrupted saves are reported and skipped."""
    # An interrupted save (a temporary directory) was never a checkpoint; a step-N directory was.
    damaged = [info for info in torn if info.path.name.startswith("step-")]
    if damaged and not complete:
        names = "; ".join(f"{info.path.name}: {info.problem}" for info in damaged)
        raise ValueError(f"every checkpoint in {plan.run_dir.checkpoints} is damaged ({names}), so "
                         "--resume auto has nothing to continue from, and it does not start over by itself "
                         "(that would replace them and metrics.jsonl). Keep what you need, then pass "
                         "--overwrite_output_dir to start over there, or choose another --output_dir")
    for info in torn:
        log(f"ignoring torn checkpoint {info.path}: {info.problem}")
    return complete[-1] if complete else None


def _named_checkpoint(resume: str) -> ckpt.CheckpointInfo:
    """--resume PATH: that checkpoint, which must be complete."""
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint directory; pass "
                                "OUTPUT_DIR/checkpoints/step-N, auto or none")
    if RunDir(path).checkpoints.is_dir() or RunDir(path).run_config.is_file():
        complete, _ = ckpt.list_checkpoints(path)
        newest = f"its newest complete checkpoint is {complete[-1].path}" if complete else "it holds no complete checkpoint"
        raise ValueError(f"--resume {path} is a run directory, not a checkpoint ({newest}): pass one of its "
                         f"checkpoints/step-N, or --output_dir {path} --resume auto to continue that run there")
    if not (path / ckpt.TRAINABLE).is_file() and not (path / ckpt.MARKER).is_file():
        raise ValueError(f"--resume {path} is not a checkpoint (it has no {ckpt.TRAINABLE} and no {ckpt.MARKER}); "
                         "pass OUTPUT_DIR/checkpoints/step-N of a run, auto or none")
    problem = ckpt.check_checkpoint(path)
    if problem:
        raise ValueError(f"--resume {path} is not a complete checkpoint: {problem}")
    ckpt.refuse_pickles(path)
    return ckpt.CheckpointInfo(path, int(ckpt.load_trainer_state(path)["step"]))


def _check_same_run(plan: Plan, checkpoint: ckpt.CheckpointInfo, state: dict, record_present: bool,
                    log: Callable[[str], None]) -> dict | None:
    """--resume auto: the settings the checkpoint itself records (trainer_state.json's "settings")
    must be this run's but for its length, whether or not run_config.json is still there (a deleted
    run_config.json must not turn the comparison off). Returns run_config.json's "resumed_from" when
    --allow_config_change lets a run continue under other settings."""
    cfg, path = plan.cfg, checkpoint.path
    recorded = state.get("settings")
    if not isinstance(recorded, dict):
        if record_present:
            return None  # a checkpoint of an earlier version: run_config.json was compared instead
        if not cfg.allow_config_change:
            raise ValueError(f"{plan.run_dir.run_config} is missing, and checkpoint {path} does not record the "
                             "settings it trained under (an earlier version wrote it), so whether this run "
                             "continues it unchanged cannot be checked. Restore run_config.json, or pass "
                             "--allow_config_change true to continue it under these settings (then recorded)")
        log(f"resuming from {path}: the settings it trained under are unknown (--allow_config_change)")
        return {"checkpoint": str(path.resolve()), "step": checkpoint.step,
                "changed": {"unknown": str(plan.run_dir.run_config)}}
    mine, theirs = identity(plan.settings), identity(recorded)
    changes = {k: [theirs.get(k), mine[k]] for k in mine if mine[k] != theirs.get(k)}
    beyond_length = set(changes) - set(LENGTH_KEYS)
    if not beyond_length:
        return None
    listed = "; ".join(f"{k}: {there!r} there, {now!r} now" for k, (there, now) in changes.items())
    if not cfg.allow_config_change:
        missing = "" if record_present else f" ({plan.run_dir.run_config} is missing; the checkpoint records them)"
        raise ValueError(f"checkpoint {path} trained under other settings{missing}: {listed}. Continuing it would "
                         "train partly under those and partly under these. Pass the same settings to continue "
                         "it, --allow_config_change true to continue under the new ones (the differences are "
                         "then recorded in run_config.json), or --overwrite_output_dir to start over")
    log(f"resuming from {path} (step {checkpoint.step}), which trained under other settings ({listed}) "
        "(--allow_config_change)")
    return {"checkpoint": str(path.resolve()), "step": checkpoint.step, "changed": changes}


def _resume_from(plan: Plan, checkpoint: ckpt.CheckpointInfo, resumed_from: dict | None,
                 log: Callable[[str], None], record_present: bool = True) -> ResumePoint:
    """Check that ``checkpoint`` fits this run (tensors, settings when it is another run's, data
    position, length) before anything loads."""
    cfg, path = plan.cfg, checkpoint.path
    ckpt.refuse_pickles(path)  # first: nothing of a planted checkpoint is read beyond its names
    ckpt.check_fits(path, plan.trainable_shapes)
    ckpt.check_loadable(path)
    if cfg.resume != "auto" and path.resolve().parent != plan.run_dir.checkpoints.resolve():
        # Another run's checkpoint: its tensors fit; do its settings match this run's?
        changes = compare_with_source_run(plan, checkpoint, log)
        if changes:
            resumed_from = {"checkpoint": str(path.resolve()), "step": checkpoint.step, "changed": changes}
    state = ckpt.load_trainer_state(path)
    if cfg.resume == "auto":
        resumed_from = _check_same_run(plan, checkpoint, state, record_present, log) or resumed_from
    try:
        step, position = int(state["step"]), state["data"]
        # The data position must fit this world size and batch: checked now, not after loading.
        make_batches(plan, rank=0).load_state_dict(position)
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path} has an incomplete trainer_state.json (no {err}); it was not "
                         "written by this trainer: resume from another checkpoint or --resume none") from None
    if step > plan.total_steps:
        raise ValueError(f"checkpoint {path} is at step {step}, beyond this run's {plan.total_steps} steps")
    return ResumePoint(checkpoint=checkpoint, state=state, resumed_from=resumed_from)


def choose_resume(plan: Plan, log: Callable[[str], None]) -> ResumePoint:
    """Where the run starts (``_choose_resume``); then, for a run that trains, the base model's
    weights against its config, the last check, as it reads the weights' headers: every other
    mistake is reported first, and a tensor missing from the weights is never trained from
    random values."""
    resume = _choose_resume(plan, log)
    if not resume.finished:
        from .models import check_weights_match

        check_weights_match(plan.model_path, plan.model_config)
    return resume


def _choose_resume(plan: Plan, log: Callable[[str], None]) -> ResumePoint:
    """Check OUTPUT_DIR against this run and decide where it starts.

    Refuses the base model's directory; a directory with files of a user's where the run
    replaces files; a new run in a directory holding files that are not a run's; a directory
    holding a run with a different config; --resume none over an existing run; and every
    checkpoint damaged. --overwrite_output_dir starts over instead of the last three (what to
    clear goes into ``start_over``). ``finished`` when this exact run already finished there
    (nothing to do). Reads only; nothing is written.
    """
    cfg, run_dir = plan.cfg, plan.run_dir
    guards.check_output_path(run_dir)
    guards.check_not_model_dir(run_dir, plan.model_path)
    found = guards.survey(run_dir)
    guards.check_collisions(run_dir, found)
    previous = _previous_run(cfg, run_dir)
    complete, torn = ckpt.list_checkpoints(run_dir)
    if cfg.overwrite_output_dir:
        if cfg.resume not in ("auto", "none"):
            raise ValueError(f"--overwrite_output_dir starts the run over in {run_dir}, so it cannot also "
                             f"--resume {cfg.resume}; drop one of the two")
        return ResumePoint(start_over=found)
    if previous is None and not complete and not torn:
        guards.check_new_run_dir(run_dir, found, overwrite_output_dir=False)
    new_length = _new_length(plan, previous)
    if cfg.resume == "none":
        if previous is not None or complete or torn:
            raise ValueError(f"{run_dir} already holds a run and --resume none would overwrite it; "
                             "pass --resume auto to continue it, --overwrite_output_dir to start over, "
                             "or choose another --output_dir")
        return ResumePoint()
    if cfg.resume != "auto":
        return _resume_from(plan, _named_checkpoint(cfg.resume), None, log)
    if previous is not None and previous.finished and run_dir.adapter.is_dir() and new_length is None:
        log(f"{run_dir} holds this run, finished at step {previous.final_step}: nothing to train "
            f"(the adapter is in {run_dir.adapter})")
        return ResumePoint(finished=True)
    if new_length is not None:
        log(f"continuing {run_dir}, a {new_length[0]}-step run, to {new_length[1]} steps: the lr schedule "
            f"is recomputed for {new_length[1]} steps ({plan.warmup_steps} of warmup)")
    resumed_from = previous.resumed_from if previous is not None else None  # a continued run started there
    checkpoint = _newest_of_this_run(plan, complete, torn, log)
    if checkpoint is None:
        return ResumePoint(resumed_from=resumed_from)
    return _resume_from(plan, checkpoint, resumed_from, log, record_present=previous is not None)
