"""The training run's settings: one dataclass, filled from defaults <- YAML (--config) <- flags.

The flags and the YAML keys are the same names (the LoRETTA ones are LorettaConfig's field
names), so a run config file is a copy of a command line. Validation here checks types and
ranges only (no model, no data): it runs on every rank before anything else.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .adapters.config import DEFAULT_TARGETS, INITS, TARGET_PRESETS, LorettaConfig
from .tiny_llama import TINY_LLAMA_NAME as BUILTIN_MODEL

FORMATS = ("auto", "text", "prompt_completion", "instruction", "classification")
METHODS = ("rep", "adp", "lora")
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
# A config shipped with the package (loretta_ds/ds_configs/, linked from the checkout's ds_configs/):
# the default resolves in a checkout and in a non-editable install alike.
DEFAULT_DS_CONFIG = "zero3_offload"

_LORETTA_DEFAULTS = LorettaConfig()


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults are tuned so that a run with no flags (the
    built-in tiny-llama on the bundled classification task) learns the task in a few minutes."""

    model: str = BUILTIN_MODEL
    dataset: list[str] = field(default_factory=list)  # empty: the bundled demo task
    format: str = "auto"
    ds_config: str = DEFAULT_DS_CONFIG
    method: str = "rep"
    # LoRETTA (LorettaConfig's names; target_modules None = the method's default)
    r: int = _LORETTA_DEFAULTS.r
    tensor_rank: int = _LORETTA_DEFAULTS.tensor_rank
    alpha: float = _LORETTA_DEFAULTS.alpha
    dropout: float = _LORETTA_DEFAULTS.dropout
    bottleneck: int = _LORETTA_DEFAULTS.bottleneck
    target_modules: str | None = None
    init: str = _LORETTA_DEFAULTS.init
    train_norms: bool = True
    # optimization
    lr: float | None = None  # None: the ds_config's number, else DEFAULT_LR
    warmup_steps: int | None = None  # None: 5% of the steps
    grad_clip: float | None = None  # None: the ds_config's number, else DEFAULT_GRAD_CLIP
    max_steps: int | None = None  # None: --epochs over the data
    epochs: float | None = None  # None (and no max_steps): DEFAULT_EPOCHS
    micro_batch_size: int | None = None  # None: the ds_config's number, else DEFAULT_GLOBAL_BATCH / world
    grad_accum: int | None = None
    seq_len: int = 128
    packing: bool = False  # concatenate examples into rows of exactly seq_len tokens (data/packing.py)
    chat_template: str | None = None  # Jinja file for chat data; None: the tokenizer's, else the default
    bf16: bool | None = None  # None: the ds_config's bf16.enabled, else false
    gradient_checkpointing: bool = False
    attn: str = "auto"
    # evaluation, checkpoints, output
    eval_every: int = 50
    eval_batches: int | None = None  # None: the whole validation split
    save_every: int = 100
    keep_last: int = 2
    output_dir: str | None = None  # None: runs/<model>-<method>
    resume: str = "auto"
    overwrite_output_dir: bool = False  # start over in an OUTPUT_DIR that holds a run or other files
    allow_config_change: bool = False  # --resume PATH from a run whose settings differ from this one's
    seed: int = 0
    export: bool = True
    max_bad_steps: int = 10
    dist_timeout: int = 600
    verify_frozen: bool = False
    debug: bool = False

    def loretta_config(self) -> LorettaConfig | None:
        """The adapter config of a LoRETTA run (None for the LoRA baseline)."""
        if self.method == "lora":
            return None
        return LorettaConfig(method=self.method, r=self.r, tensor_rank=self.tensor_rank, alpha=self.alpha,
                             dropout=self.dropout, bottleneck=self.bottleneck,
                             target_modules=self.target_modules, init=self.init, train_norms=self.train_norms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_LR = 1e-2
DEFAULT_GRAD_CLIP = 1.0
DEFAULT_EPOCHS = 4
DEFAULT_GLOBAL_BATCH = 16

# Settings that change what is trained; two runs that differ in one of them are different runs,
# and a run directory refuses to continue under different ones. The rest (how often to save,
# where, whether to export ...) may change between a run and its resumption; so may the split of
# the global batch into processes x micro batch x accumulation (a resume on another process count).
IDENTITY_KEYS = ("model", "dataset", "format", "method", "r", "tensor_rank", "alpha", "dropout",
                 "bottleneck", "target_modules", "init", "train_norms", "lr", "warmup_steps",
                 "grad_clip", "max_steps", "epochs", "global_batch", "seq_len", "bf16", "seed",
                 "packing", "chat_template")
# The identity keys of the run's length: a run continued under other values is extended (or
# shortened), its lr schedule recomputed for the new length (warmup's default is 5% of it).
LENGTH_KEYS = ("max_steps", "epochs", "warmup_steps")
# Identity keys added later: a run_config.json written before them had these values.
_IDENTITY_DEFAULTS = {"packing": False, "chat_template": None}

def _preset_modules(modules: list[str]) -> str:
    """A target preset's modules for the help text; a union of other presets is named as such."""
    parts = [name for name, mods in TARGET_PRESETS.items() if mods != modules and set(mods) <= set(modules)]
    if parts and sum(len(TARGET_PRESETS[p]) for p in parts) == len(modules):
        return " + ".join(parts)
    return ",".join(modules)


_HELP = {
    "config": "YAML file with any of these settings (keys = flag names); flags override it",
    "ds_config": "DeepSpeed JSON config: a file, or a shipped one by name (zero3_offload, zero3, zero2; "
                 f"default {DEFAULT_DS_CONFIG}); \"auto\" values are filled from these flags",
    "model": f"Hugging Face model directory or hub id (default: the built-in {BUILTIN_MODEL})",
    "dataset": "one or more json/jsonl/csv/parquet files or dataset names, each optionally with a "
               "mixing weight as NAME:WEIGHT (default: the bundled classification task)",
    "format": "how records become examples: " + " | ".join(FORMATS) + " (default auto: detected from the fields)",
    "method": "rep (TT-factored LoRA update, mergeable) | adp (TT bottleneck adapters) | lora (PEFT LoRA "
              "r=8 on the same targets, a baseline) (default rep)",
    "lr": f"peak learning rate (default: the ds_config's, else {DEFAULT_LR})",
    "warmup_steps": "linear warmup steps (default: the ds_config's warmup_num_steps, else 5%% of the steps)",
    "grad_clip": f"gradient clipping norm, 0: off (default: the ds_config's, else {DEFAULT_GRAD_CLIP})",
    "max_steps": "optimizer steps (default: from --epochs)",
    "epochs": f"passes over the training data, when --max_steps is not given (default {DEFAULT_EPOCHS})",
    "micro_batch_size": "examples per process per forward (default: the ds_config's, else a global "
                        f"batch of {DEFAULT_GLOBAL_BATCH} split over the processes)",
    "grad_accum": "micro batches per optimizer step (default: the ds_config's, else 1)",
    "seq_len": "longest example in tokens (longer ones are truncated; default 128); with --packing, the row length",
    "packing": "pack the examples into rows of exactly seq_len tokens, attention kept within each "
               "example: no compute on padding (true/false)",
    "chat_template": "Jinja chat template file for chat data (default: the tokenizer's own, else "
                     "loretta_ds's default ### User / ### Assistant template)",
    "bf16": "train in bfloat16 (true/false; default: the ds_config's bf16.enabled, else false)",
    "gradient_checkpointing": "keep only each decoder layer's input and recompute the layer in backward: "
                              "far less activation memory for one more forward pass per step (true/false; "
                              "default false)",
    "attn": "attention kernel: " + " | ".join(ATTENTION) + " (default auto: flash_attention_2 when flash-attn is installed and a GPU is "
                                               "visible, else sdpa)",
    "eval_every": "evaluate every N steps (0: only at the end; default 50)",
    "eval_batches": "evaluate on at most N micro batches per process, and as many classification "
                    "records (default: all)",
    "save_every": "checkpoint every N steps (0: only at the end; default 100)",
    "keep_last": "keep the N newest checkpoints (default 2)",
    "output_dir": "run directory (default: runs/<model>-<method>)",
    "resume": "auto (newest complete checkpoint in OUTPUT_DIR, if any) | a checkpoint directory | none",
    "overwrite_output_dir": "start the run over in OUTPUT_DIR even though it holds a run (its checkpoints, "
                            "metrics, adapter and merged export are replaced) or files that are not a run's "
                            "(never deleted); not for a job that requeues itself (true/false)",
    "allow_config_change": "with --resume PATH: continue from a checkpoint of a run whose settings (lr, data, "
                           "adapter, ...) differ from this run's; the differences are printed and recorded "
                           "in run_config.json (true/false; default false: refused, naming them)",
    "seed": "seed of initialization, data order and dropout (default 0)",
    "export": "merged Hugging Face export of a rep run at the end (true/false; default true)",
    "max_bad_steps": "stop after this many consecutive steps with non-finite loss or gradients (default 10)",
    "dist_timeout": "seconds a collective may wait for a lost rank before the run fails (default 600)",
    "verify_frozen": "at the end, compare every frozen base weight with the model directory's "
                     "safetensors, bit for bit (gathers one weight at a time; slow for big models; default false)",
    # LoRETTA (shared with `loretta-ds count` and `estimate`)
    "r": f"rep: rank of the low-rank update B(A(x)) that the tensor trains store (default {_LORETTA_DEFAULTS.r})",
    "tensor_rank": "TT bond rank of every factor matrix: more rank, more trainable parameters "
                   f"(default {_LORETTA_DEFAULTS.tensor_rank})",
    "alpha": f"rep: the update is scaled by alpha / r (default {_LORETTA_DEFAULTS.alpha:g})",
    "dropout": f"rep: dropout on the adapter's input, 0 <= p < 1 (default {_LORETTA_DEFAULTS.dropout:g})",
    "bottleneck": f"adp: width of each TT bottleneck adapter (default {_LORETTA_DEFAULTS.bottleneck})",
    "target_modules": "modules to adapt: comma-separated names matched as the last part of a module's path "
                      "(q_proj,v_proj) or a preset: "
                      + "; ".join(f"{name} ({_preset_modules(mods)})" for name, mods in TARGET_PRESETS.items())
                      + " (default: rep " + ",".join(DEFAULT_TARGETS["rep"]) + "; adp "
                      + ",".join(DEFAULT_TARGETS["adp"]) + ", the paper's placement)",
    "init": " | ".join(INITS) + ": zero (default) starts from the base model exactly (the update is 0 "
            "at step 0, every core still gets gradient); reference draws the paper's Gaussian cores",
    "train_norms": "also train every RMSNorm weight, as the paper's parameter counts do (true/false; "
                   "default true)",
}


def parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """All TrainConfig fields as flags. No flag has a default in the namespace, so the namespace
    holds exactly what the user typed and ``config_from_args`` can layer it over the YAML."""
    suppress = argparse.SUPPRESS
    parser.add_argument("--config", default=suppress, help=_HELP["config"])
    parser.add_argument("--local_rank", type=int, default=suppress, help=suppress)  # the deepspeed launcher's
    for item in dataclasses.fields(TrainConfig):
        name = item.name
        if name == "debug":
            continue  # cli.py owns --debug
        kwargs: dict = {"default": suppress, "help": _HELP.get(name, f"{name} (default: {item.default})")}
        if name == "dataset":
            kwargs["nargs"] = "+"
        elif name in ("format", "method", "attn"):
            kwargs["choices"] = {"format": FORMATS, "method": METHODS, "attn": ATTENTION}[name]
        elif item.type in ("bool", "bool | None"):
            kwargs.update(nargs="?", const=True, type=parse_bool)
        elif item.type in ("int", "int | None"):
            kwargs["type"] = int
        elif item.type in ("float", "float | None"):
            kwargs["type"] = float
        parser.add_argument(f"--{name}", **kwargs)


def _load_yaml(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"run config {file} does not exist; pass --config with a YAML file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        def at(mark) -> str:
            return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""

        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        started = f"{context}{at(getattr(err, 'context_mark', None))}: " if context else ""
        raise ValueError(f"run config {file} is not valid YAML: {started}{problem}"
                         f"{at(getattr(err, 'problem_mark', None))}; fix it (keys are the flag names, "
                         "e.g. lr: 0.01)") from None
    if not isinstance(data, dict):
        raise ValueError(f"run config {file} must be a mapping of setting: value (the flag names)")
    return data


def config_from_args(args: argparse.Namespace | dict) -> TrainConfig:
    """TrainConfig from defaults, then the YAML of --config, then the flags typed."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    for key in ("command", "run", "local_rank"):
        given.pop(key, None)
    values: dict = {}
    if given.get("config"):
        values.update(_load_yaml(given.pop("config")))
    given.pop("config", None)
    values.update(given)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} in the run config; valid keys: {sorted(known)}")
    cfg = TrainConfig(**{key: _as_field_type(key, value) for key, value in values.items()})
    return validate(cfg)


_FIELD_TYPES = {item.name: str(item.type) for item in dataclasses.fields(TrainConfig)}


def _as_field_type(key: str, value):
    """``value`` as the type of setting ``key``, or a ValueError naming the key.

    YAML hands over what it parsed: PyYAML reads ``lr: 1e-3`` as the string '1e-3' (YAML 1.1 wants
    a dot), so numbers written as text are accepted; ``model: 5`` is a number where a path is
    meant, refused with the fix rather than failing later inside a library.
    """
    kind = _FIELD_TYPES[key]
    if value is None:
        if "None" in kind:
            return None
        raise ValueError(f"{key} needs a value (got nothing; in YAML, {key}: with no value is null)")
    base = kind.replace(" | None", "")
    if base in ("float", "int") and not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(f"{key} must be a number, got {value!r}") from None
        if isinstance(number, (int, float)):
            if base == "float":
                return float(number) if isinstance(value, str) else number
            if isinstance(number, int) or (math.isfinite(number) and float(number).is_integer()):
                return int(number)
        raise ValueError(f"{key} must be {'a whole number' if base == 'int' else 'a number'}, got {value!r}")
    if base in ("float", "int"):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if base == "str":
        if key == "target_modules" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{key} must be text, got {value!r} ({type(value).__name__}); in YAML, quote it: "
                             f"{key}: \"{value}\"")
        if not value.strip():
            raise ValueError(f"{key} is empty; give a value or leave the setting out for its default")
        return value
    if base == "list[str]":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v.strip() for v in items):
            raise ValueError(f"{key} must be file names or dataset names (text), got {value!r}")
        return items
    return value


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Type and range checks; normalizes the dataset list and booleans. Returns ``cfg``."""
    if isinstance(cfg.dataset, str):
        cfg.dataset = [cfg.dataset]
    cfg.dataset = [str(d) for d in (cfg.dataset or [])]
    for name, allowed in (("format", FORMATS), ("method", METHODS), ("attn", ATTENTION)):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"unknown {name} {getattr(cfg, name)!r}: use one of {', '.join(allowed)}")
    for name in ("bf16", "gradient_checkpointing", "export", "train_norms", "verify_frozen", "overwrite_output_dir",
                 "debug", "packing", "allow_config_change"):
        if name == "bf16" and cfg.bf16 is None:
            continue  # the ds_config decides
        try:  # `--bf16` alone means true (argparse const); `--bf16 false` and YAML booleans work too
            setattr(cfg, name, parse_bool(getattr(cfg, name)))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{name}: {err}") from None
    if isinstance(cfg.target_modules, list):
        cfg.target_modules = ",".join(cfg.target_modules)
    for name in ("max_steps", "micro_batch_size", "grad_accum", "eval_batches"):
        _check_int(name, getattr(cfg, name), 1, allow_none=True)
    _check_int("warmup_steps", cfg.warmup_steps, 0, allow_none=True)
    for name in ("seq_len", "max_bad_steps", "dist_timeout", "keep_last"):
        _check_int(name, getattr(cfg, name), 1)
    for name in ("eval_every", "save_every", "seed"):
        _check_int(name, getattr(cfg, name), 0)
    for name in ("lr", "epochs", "grad_clip", "alpha", "dropout"):
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not isinstance(cfg.alpha, (int, float)) or isinstance(cfg.alpha, bool) or cfg.alpha <= 0:
        raise ValueError(f"alpha must be a number > 0 (the update is scaled by alpha / r), got {cfg.alpha!r}")
    if cfg.epochs is not None and not (isinstance(cfg.epochs, (int, float)) and cfg.epochs > 0):
        raise ValueError(f"epochs must be a number > 0, got {cfg.epochs!r}")
    if cfg.lr is not None and not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise ValueError(f"lr must be a number > 0, got {cfg.lr!r}")
    if cfg.grad_clip is not None and not (isinstance(cfg.grad_clip, (int, float)) and cfg.grad_clip >= 0):
        raise ValueError(f"grad_clip must be a number >= 0, got {cfg.grad_clip!r}")
    if not isinstance(cfg.resume, str) or not cfg.resume:
        raise ValueError(f"resume must be auto, none or a checkpoint directory, got {cfg.resume!r}")
    # LorettaConfig validates the adapter settings (for the LoRA baseline: r, alpha, dropout, targets).
    cfg.loretta_config() or LorettaConfig(method="rep", r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                                          target_modules=cfg.target_modules)
    if cfg.chat_template is not None:
        if not isinstance(cfg.chat_template, str) or not cfg.chat_template:
            raise ValueError(f"chat_template must be the path of a Jinja file, got {cfg.chat_template!r}")
        # Absolute: run_config.json names the file whatever directory a resume starts from.
        cfg.chat_template = str(Path(cfg.chat_template).expanduser().absolute())
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / f"{Path(cfg.model.rstrip('/')).name}-{cfg.method}")
    return cfg


def identity(train: dict) -> dict:
    """The settings that define what a run trains (see IDENTITY_KEYS)."""
    return {key: train.get(key, _IDENTITY_DEFAULTS.get(key)) for key in IDENTITY_KEYS}
