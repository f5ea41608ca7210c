"""The training run's settings: one read-only dataclass, filled from defaults <- YAML (--config) <- flags.

Every setting is declared once, with its help text (loretta_ds.settings): the flags are generated
from the fields, and a YAML run config uses the same names. The adapter's settings nest as
``TrainConfig.adapter`` (``AdapterSettings``; the ``adapter:`` block of a YAML file, or its keys at
the top level, as the flags are). Validation here checks types and ranges only (no model, no
data): it runs on every rank before anything else. What the run resolves from the model, the data
and the DeepSpeed config (lr, batch split, steps, warmup ...) goes into the plan (train_plan.py),
never back into this config.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .adapters.config import METHODS as LORETTA_METHODS
from .adapters.config import AdapterSettings
from .data.formats import FORMATS
from .data.spec_text import absolute_spec
from .quantization import COMPUTE_DTYPES, EXTRA as QUANT_EXTRA, QUANT_TYPES
from .settings import add_flags, coerce, parse_bool, setting
from .tiny_llama import TINY_LLAMA_NAME as BUILTIN_MODEL

# The adapter methods (adapters.config.METHODS) and the LoRA baseline.
TRAIN_METHODS = (*LORETTA_METHODS, "lora")
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
# A config shipped with the package (loretta_ds/ds_configs/, linked from the checkout's ds_configs/):
# the default resolves in a checkout and in a non-editable install alike.
DEFAULT_DS_CONFIG = "zero3_offload"
DEFAULT_LR = 1e-2
DEFAULT_GRAD_CLIP = 1.0
DEFAULT_EPOCHS = 4
DEFAULT_GLOBAL_BATCH = 16
DEFAULT_EVAL_SPLIT = 0.05
# What happens to an example whose prompt leaves no answer token within --seq_len.
TOO_LONG = ("drop", "refuse")
# Where the metrics go besides metrics.jsonl (and TensorBoard when installed): loretta_ds.run.reporting.
REPORT_TO = ("none", "wandb", "mlflow")


def parse_datasets(value, name: str = "dataset") -> tuple[str, ...]:
    """One or more dataset specs (a YAML list or one text); a spec naming an existing file or
    directory is recorded by its absolute path (a run continued from another directory names the
    same data)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:  # `dataset: []` in YAML: never the silent fallback to the bundled task
        raise ValueError(f"{name} is an empty list: it names no data; list one or more files or dataset names "
                         f"({name}: [train.jsonl]), or leave the key out"
                         + (" for the bundled classification task" if name == "dataset" else ""))
    if not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError(f"{name} must be file names or dataset names (text), got {value!r}")
    return tuple(absolute_spec(v) for v in items)


def parse_eval_datasets(value) -> tuple[str, ...]:
    return parse_datasets(value, "eval_dataset")


def parse_eval_split(value) -> float:
    """--eval_split: a fraction in (0, 1) of each data file's records, or a count (an integer >= 1)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0 or (number >= 1 and number != int(number)):
        raise ValueError(f"eval_split must be a fraction in (0, 1) (e.g. 0.1) or a count of records (e.g. 200), "
                         f"got {value!r}")
    return int(number) if number >= 1 else number


def parse_chat_template(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"chat_template must be the path of a Jinja file, got {value!r}")
    # Absolute: run_config.json names the file whatever directory a resume starts from.
    return str(Path(value).expanduser().absolute())


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults are tuned so that a run with no flags (the
    built-in tiny-llama on the bundled classification task) learns the task in a few minutes."""

    model: str = setting(BUILTIN_MODEL, help="Hugging Face model directory or hub id (default: the built-in "
                                             f"{BUILTIN_MODEL}); count, estimate and a layout-only plan also take "
                                             "a config.json or a shape-only preset: llama2-7b | llama2-13b | "
                                             "llama2-70b")
    dataset: tuple[str, ...] = setting(
        default_factory=tuple, parse=parse_datasets, nargs="+",
        help="one or more json/jsonl/csv/parquet files or dataset names, each optionally with a mixing "
             "weight as NAME:WEIGHT (default: the bundled classification task)")
    eval_dataset: tuple[str, ...] = setting(
        default_factory=tuple, parse=parse_eval_datasets, nargs="+",
        help="held-out evaluation data: one or more files or dataset names in --dataset's formats (default: "
             "each --dataset's own validation split, else --eval_split of its records held out)")
    eval_split: float = setting(DEFAULT_EVAL_SPLIT, parse=parse_eval_split,
                                help="without --eval_dataset, how much of each data file without a validation "
                                     "split is held out for evaluation: a fraction in (0, 1) or a count of "
                                     f"records (default {DEFAULT_EVAL_SPLIT})")
    too_long: str = setting("drop", choices=TOO_LONG,
                            help="an example whose prompt leaves no answer token within --seq_len: drop (removed "
                                 "and counted in the log; default) | refuse (the run stops, naming the first one); "
                                 "the same with and without --packing")
    format: str = setting("auto", choices=FORMATS,
                          help="how records become examples: " + " | ".join(FORMATS)
                               + " (default auto: detected from the fields)")
    ds_config: str = setting(DEFAULT_DS_CONFIG,
                             help="DeepSpeed JSON config: a file, a shipped one by name (zero3_offload, zero3, "
                                  f"zero2; default {DEFAULT_DS_CONFIG}), or auto: the fastest layout whose memory "
                                  "fits (docs/layouts.md); \"auto\" values are filled from these flags")
    gpu_memory: float | None = setting(None, help="memory of one accelerator in GiB, for --ds_config auto and the hpZ "
                                                  "choice (default: the CUDA device's total memory; without CUDA, "
                                                  "host memory / processes per node)")
    host_memory: float | None = setting(None, help="host memory of one node in GiB, for offload under --ds_config "
                                                   "auto (default: this machine's total)")
    method: str = setting("rep", choices=TRAIN_METHODS,
                          help="rep (TT-factored LoRA update, mergeable) | adp (TT bottleneck adapters) | lora "
                               "(PEFT LoRA on the same targets, a baseline) (default rep)")
    adapter: AdapterSettings = setting(default_factory=AdapterSettings, flag=False,
                                       help="the adapter's settings (flags of their own, see AdapterSettings)")
    # optimization; None: resolved by the plan (the ds_config's number, else the default)
    lr: float | None = setting(None, help=f"peak learning rate (default: the ds_config's, else {DEFAULT_LR})")
    warmup_steps: int | None = setting(None, help="linear warmup steps (default: the ds_config's warmup_num_steps, "
                                                  "else 5%% of the steps)")
    grad_clip: float | None = setting(None, help="gradient clipping norm, 0: off (default: the ds_config's, else "
                                                 f"{DEFAULT_GRAD_CLIP})")
    max_steps: int | None = setting(None, help="optimizer steps (default: from --epochs)")
    epochs: float | None = setting(None, help="passes over the training data, when --max_steps is not given "
                                              f"(default {DEFAULT_EPOCHS})")
    micro_batch_size: int | None = setting(None, help="examples per process per forward (default: the ds_config's, "
                                                      f"else a global batch of {DEFAULT_GLOBAL_BATCH} split over "
                                                      "the processes)")
    grad_accum: int | None = setting(None, help="micro batches per optimizer step (default: the ds_config's, else 1)")
    seq_len: int = setting(128, help="longest example in tokens (longer ones are truncated; default 128); with "
                                     "--packing, the row length")
    packing: bool = setting(False, help="pack the examples into rows of exactly seq_len tokens, attention kept "
                                        "within each example: no compute on padding (true/false)")
    chat_template: str | None = setting(None, parse=parse_chat_template,
                                        help="Jinja chat template file for chat data (default: the tokenizer's own, "
                                             "else loretta_ds's default ### User / ### Assistant template)")
    bf16: bool | None = setting(None, help="train in bfloat16 (true/false; default: the ds_config's bf16.enabled, "
                                           "else false)")
    gradient_checkpointing: bool = setting(False, help="keep only each decoder layer's input and recompute the "
                                                       "layer in backward: far less activation memory for one more "
                                                       "forward pass per step (true/false; default false)")
    attn: str = setting("auto", choices=ATTENTION,
                        help="attention kernel: " + " | ".join(ATTENTION) + " (default auto: flash_attention_2 when "
                             "flash-attn is installed and a GPU is visible, else sdpa)")
    # a 4-bit frozen base (loretta_ds.quantization; needs the optional extra "qlora")
    load_in_4bit: bool = setting(False, help="load the frozen base's linear layers in 4 bits (bitsandbytes, as "
                                             "QLoRA): about 0.52 bytes per weight instead of 2; the adapter trains "
                                             f"in full precision (true/false; needs the '{QUANT_EXTRA}' extra)")
    bnb_4bit_quant_type: str = setting("nf4", choices=QUANT_TYPES,
                                       help="4-bit data type: nf4 (NormalFloat, QLoRA's) | fp4 (default nf4)")
    bnb_4bit_use_double_quant: bool = setting(True, help="quantize the 4-bit blocks' scales too (0.516 instead of "
                                                         "0.5625 bytes per weight; true/false; default true)")
    bnb_4bit_compute_dtype: str | None = setting(None, choices=COMPUTE_DTYPES,
                                                 help="dtype the 4-bit weights are dequantized to for each matmul "
                                                      "(default: the run's, bfloat16 with --bf16, else float32)")
    # evaluation, checkpoints, output
    report_to: str = setting("none", choices=REPORT_TO,
                             help="also log the metrics to: none | wandb | mlflow (offline: a local directory in "
                                  "OUTPUT_DIR; needs that package installed; default none)")
    eval_every: int = setting(50, help="evaluate every N steps (0: only at the end; default 50)")
    eval_batches: int | None = setting(None, help="evaluate on at most N micro batches per process, and as many "
                                                  "classification records (0: no evaluation at all, for runs "
                                                  "where each forward costs minutes; default: all)")
    eval_generate: int = setting(0, help="at each evaluation, greedily complete the first N prompts of the eval "
                                         "split and log them to metrics.jsonl (kind 'generation'; default 0: none)")
    save_every: int = setting(100, help="checkpoint every N steps (0: only at the end; default 100)")
    keep_last: int = setting(2, help="keep the N newest checkpoints (default 2)")
    output_dir: str | None = setting(None, help="run directory (default: runs/<model>-<method>)")
    resume: str = setting("auto", help="auto (newest complete checkpoint in OUTPUT_DIR, if any) | a checkpoint "
                                       "directory | none")
    overwrite_output_dir: bool = setting(False, help="start the run over in OUTPUT_DIR even though it holds a run "
                                                     "(its checkpoints, metrics, adapter and merged export are "
                                                     "replaced) or files that are not a run's (never deleted); not "
                                                     "for a job that requeues itself (true/false)")
    allow_config_change: bool = setting(False, help="with --resume PATH: continue from a checkpoint of a run whose "
                                                    "settings (lr, data, adapter, ...) differ from this run's; the "
                                                    "differences are printed and recorded in run_config.json "
                                                    "(true/false; default false: refused, naming them)")
    seed: int = setting(0, help="seed of initialization, data order and dropout (default 0)")
    export: bool = setting(True, help="merged Hugging Face export of a rep run at the end (true/false; default true)")
    max_bad_steps: int = setting(10, help="stop after this many consecutive steps with non-finite loss or "
                                          "gradients (default 10)")
    dist_timeout: int = setting(600, help="seconds a collective may wait for a lost rank before the run fails "
                                          "(default 600)")
    verify_frozen: bool = setting(False, help="at the end, compare every frozen base weight with the model "
                                              "directory's safetensors, bit for bit (gathers one weight at a "
                                              "time; slow for big models; default false)")
    debug: bool = setting(False, flag=False, help="show tracebacks (the command line's --debug)")

    def flat(self) -> dict:
        """The settings as the flags name them (adapter settings at the top level), JSON-ready: what
        run_config.json's "train" starts from."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adapter"}
        values.update(self.adapter.to_dict())
        values["dataset"] = list(self.dataset)
        values["eval_dataset"] = list(self.eval_dataset)
        if isinstance(values["target_modules"], list):
            values["target_modules"] = ",".join(values["target_modules"])
        return values


TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"adapter"}
ADAPTER_FIELDS = {f.name for f in dataclasses.fields(AdapterSettings)}

# Settings that change what is trained; two runs that differ in one of them are different runs,
# and a run directory refuses to continue under different ones. The rest (how often to save,
# where, whether to export ...) may change between a run and its resumption; so may the split of
# the global batch into processes x micro batch x accumulation (a resume on another process count).
IDENTITY_KEYS = ("model", "dataset", "format", "method", "r", "tensor_rank", "alpha", "dropout",
                 "bottleneck", "activation", "adapter_scaling", "target_modules", "init", "train_norms",
                 "tt_shapes", "lr", "warmup_steps", "grad_clip", "max_steps", "epochs", "global_batch", "seq_len",
                 "bf16", "seed", "packing", "chat_template", "load_in_4bit", "bnb_4bit_quant_type",
                 "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "eval_dataset", "eval_split")
# The identity keys of the run's length: a run continued under other values is extended (or
# shortened), its lr schedule recomputed for the new length (warmup's default is 5% of it).
LENGTH_KEYS = ("max_steps", "epochs", "warmup_steps")
# Identity keys added later: a run_config.json written before them had these values.
_IDENTITY_DEFAULTS = {"packing": False, "chat_template": None, "activation": "relu", "adapter_scaling": 1.0,
                      "tt_shapes": {}, "load_in_4bit": False, "bnb_4bit_quant_type": "nf4",
                      "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": None, "eval_dataset": [],
                      "eval_split": DEFAULT_EVAL_SPLIT}


def identity(train: dict) -> dict:
    """The settings that define what a run trains (see IDENTITY_KEYS). Dataset paths compare as
    absolute paths: a record written before they were recorded so holds them as typed, which
    still names the same data from the directory that run started in."""
    found = {key: train.get(key, _IDENTITY_DEFAULTS.get(key)) for key in IDENTITY_KEYS}
    for key in ("dataset", "eval_dataset"):
        if isinstance(found[key], (list, tuple)):
            found[key] = [absolute_spec(spec) if isinstance(spec, str) else spec for spec in found[key]]
    return found


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag. No flag has a default in the namespace, so the namespace holds
    exactly what the user typed and ``config_from_args`` can layer it over the YAML."""
    suppress = argparse.SUPPRESS
    parser.add_argument("--config", default=suppress,
                        help="YAML file with any of these settings (keys = flag names; the adapter's may go in "
                             "an adapter: block); flags override it")
    parser.add_argument("--local_rank", type=int, default=suppress, help=suppress)  # the deepspeed launcher's
    add_flags(parser, TrainConfig)
    add_adapter_arguments(parser)


def add_train_settings(parser, names: tuple[str, ...]) -> None:
    """Training's settings ``names`` as flags, declared as train declares them (its help, its
    default in the namespace): for the commands that plan a run without running it (count,
    estimate), so a flag they share with train means the same and defaults the same."""
    unknown = sorted(set(names) - TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"not training settings: {unknown}")
    add_flags(parser, TrainConfig, suppress_defaults=False, only=names)


def train_settings_from_args(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The values of ``add_train_settings(parser, names)``'s flags, typed and checked as a run's
    (``validate``'s rules), as {name: value}."""
    values = {name: coerce(TrainConfig, name, getattr(args, name)) for name in names}
    checked = validate(dataclasses.replace(TrainConfig(), **values))
    return {name: getattr(checked, name) for name in names}


def add_adapter_arguments(parser: argparse.ArgumentParser, suppress_defaults: bool = True) -> None:
    """The adapter's settings as flags (train, count, estimate and plan share them)."""
    add_flags(parser.add_argument_group("adapter (LoRETTA_rep, LoRETTA_adp, the LoRA baseline)"), AdapterSettings,
              suppress_defaults=suppress_defaults)


def adapter_settings_from_args(args: argparse.Namespace) -> AdapterSettings:
    """The AdapterSettings of a namespace made with ``add_adapter_arguments(..., suppress_defaults=False)``."""
    return AdapterSettings(**{name: coerce(AdapterSettings, name, getattr(args, name)) for name in ADAPTER_FIELDS})


# A run config is a small mapping of settings; expanded, it is at most some hundred values. The cap
# stops a "billion laughs" file (aliases of aliases) before anything expands it into gigabytes.
YAML_EXPANDED_LIMIT = 10_000


def _expanded_size(node, sizes: dict) -> int:
    """Values a YAML node stands for once its aliases are expanded (each shared node counted at
    every use; computed once per node, so a bomb is measured without being expanded)."""
    if id(node) not in sizes:
        children = node.value if isinstance(node.value, list) else []
        items = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in items)
    return sizes[id(node)]


def _strict_yaml_loader():
    """yaml.SafeLoader that refuses a key given twice (YAML would keep the last one silently) and a
    document expanding into more than YAML_EXPANDED_LIMIT values."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def get_single_node(self):
            node = super().get_single_node()
            if node is not None and _expanded_size(node, {}) > YAML_EXPANDED_LIMIT:
                raise yaml.YAMLError(f"it expands into more than {YAML_EXPANDED_LIMIT:,} values through its aliases "
                                     "(*name); a run config is a short list of settings")
            return node

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.YAMLError(f"the key {key!r} is given twice (line {key_node.start_mark.line + 1}); "
                                         "keep one")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def _load_yaml(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"run config {file} does not exist; pass --config with a YAML file")
    try:
        data = yaml.load(file.read_text(), Loader=_strict_yaml_loader()) or {}
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


def _split_yaml(data: dict) -> tuple[dict, dict]:
    """(run settings, adapter settings) of a YAML run config: the adapter's in an ``adapter:`` block
    or at the top level (as the flags are), not both."""
    run = dict(data)
    block = run.pop("adapter", None) or {}
    if not isinstance(block, dict):
        raise ValueError(f"adapter: in the run config must be a mapping of adapter settings "
                         f"({', '.join(sorted(ADAPTER_FIELDS))}), got {block!r}")
    adapter = {key: run.pop(key) for key in list(run) if key in ADAPTER_FIELDS}
    twice = sorted(set(adapter) & set(block))
    if twice:
        raise ValueError(f"{', '.join(twice)} given both at the top level and in the adapter: block of the run "
                         "config; keep one")
    unknown = sorted(set(block) - ADAPTER_FIELDS)
    if unknown:
        raise ValueError(f"unknown adapter setting(s) {unknown} in the run config's adapter: block; valid keys: "
                         f"{sorted(ADAPTER_FIELDS)}")
    return run, {**adapter, **block}


def config_from_args(args: argparse.Namespace | dict) -> TrainConfig:
    """TrainConfig from defaults, then the YAML of --config, then the flags typed."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    for key in ("command", "run", "local_rank"):
        given.pop(key, None)
    run_values, adapter_values = {}, {}
    config_file = given.pop("config", None)
    if config_file:
        run_values, adapter_values = _split_yaml(_load_yaml(config_file))
    if isinstance(given.get("adapter"), dict):  # the Python API: config_from_args({"adapter": {...}})
        adapter_values.update(given.pop("adapter"))
    for key, value in given.items():
        (adapter_values if key in ADAPTER_FIELDS else run_values)[key] = value
    unknown = sorted(set(run_values) - TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} in the run config; valid keys: "
                         f"{sorted(TRAIN_FIELDS | ADAPTER_FIELDS | {'adapter'})}")
    adapter = AdapterSettings(**{key: coerce(AdapterSettings, key, value) for key, value in adapter_values.items()})
    cfg = TrainConfig(adapter=adapter, **{key: coerce(TrainConfig, key, value) for key, value in run_values.items()})
    return validate(cfg)


SEED_LIMIT = 2 ** 31
DIST_TIMEOUT_LIMIT_S = 365 * 24 * 3600


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Type and range checks; returns the config with its defaults that depend on others filled
    (output_dir) and its values normalized (dataset a tuple, booleans parsed)."""
    changes: dict = {}
    dataset = (cfg.dataset,) if isinstance(cfg.dataset, str) else tuple(str(d) for d in (cfg.dataset or ()))
    if dataset != cfg.dataset:
        changes["dataset"] = dataset
    eval_dataset = tuple(str(d) for d in (cfg.eval_dataset or ()))
    if eval_dataset != cfg.eval_dataset:
        changes["eval_dataset"] = eval_dataset
    for name, allowed in (("format", FORMATS), ("method", TRAIN_METHODS), ("attn", ATTENTION),
                          ("too_long", TOO_LONG), ("report_to", REPORT_TO)):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"unknown {name} {getattr(cfg, name)!r}: use one of {', '.join(allowed)}")
    for name in ("bf16", "gradient_checkpointing", "export", "verify_frozen", "overwrite_output_dir",
                 "debug", "packing", "allow_config_change", "load_in_4bit", "bnb_4bit_use_double_quant"):
        value = getattr(cfg, name)
        if name == "bf16" and value is None:
            continue  # the ds_config decides
        try:  # `--bf16` alone means true (argparse const); `--bf16 false` and YAML booleans work too
            if parse_bool(value) is not value:
                changes[name] = parse_bool(value)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{name}: {err}") from None
    for name in ("max_steps", "micro_batch_size", "grad_accum"):
        _check_int(name, getattr(cfg, name), 1, allow_none=True)
    _check_int("eval_batches", cfg.eval_batches, 0, allow_none=True)
    _check_int("warmup_steps", cfg.warmup_steps, 0, allow_none=True)
    for name in ("seq_len", "max_bad_steps", "dist_timeout", "keep_last"):
        _check_int(name, getattr(cfg, name), 1)
    for name in ("eval_every", "save_every", "seed", "eval_generate"):
        _check_int(name, getattr(cfg, name), 0)
    for name in ("gpu_memory", "host_memory"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number of GiB > 0, e.g. 80, got {value!r}")
    parse_eval_split(cfg.eval_split)
    if cfg.dist_timeout > DIST_TIMEOUT_LIMIT_S:  # the process group's timedelta (and gloo's) overflow beyond
        raise ValueError(f"dist_timeout must be at most {DIST_TIMEOUT_LIMIT_S} seconds (a year), got {cfg.dist_timeout}")
    if cfg.seed >= SEED_LIMIT:  # numpy's generator takes 32-bit seeds; a resume adds 1000 x step + rank
        raise ValueError(f"seed must be below {SEED_LIMIT} (2**31), got {cfg.seed}")
    for name in ("lr", "epochs", "grad_clip"):
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if cfg.epochs is not None and not (isinstance(cfg.epochs, (int, float)) and cfg.epochs > 0):
        raise ValueError(f"epochs must be a number > 0, got {cfg.epochs!r}")
    if cfg.lr is not None and not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise ValueError(f"lr must be a number > 0, got {cfg.lr!r}")
    if cfg.grad_clip is not None and not (isinstance(cfg.grad_clip, (int, float)) and cfg.grad_clip >= 0):
        raise ValueError(f"grad_clip must be a number >= 0, got {cfg.grad_clip!r}")
    if not isinstance(cfg.resume, str) or not cfg.resume:
        raise ValueError(f"resume must be auto, none or a checkpoint directory, got {cfg.resume!r}")
    if not isinstance(cfg.adapter, AdapterSettings):
        raise ValueError("adapter must be the adapter's settings (AdapterSettings)")
    if cfg.method != "lora":
        cfg.adapter.loretta(cfg.method)  # the targets and the method's own rules, checked now
    else:
        cfg.adapter.lora_targets()
    if cfg.output_dir is None:
        changes["output_dir"] = str(Path("runs") / f"{Path(cfg.model.rstrip('/')).name}-{cfg.method}")
    return dataclasses.replace(cfg, **changes) if changes else cfg
