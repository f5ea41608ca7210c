"""The run directory (OUTPUT_DIR): the name of everything a run writes there, and run_config.json,
the record of what was trained on what.

Every module that touches a run directory takes its names from here (the trainer, checkpoints,
metrics, the output-directory guards, export and generate), and run_config.json is written and
read only through ``RunRecord``. Imports nothing of the package but file_io.

    OUTPUT_DIR/
      run_config.json      RunRecord: base model, method, adapter config, every resolved setting
      adapter/             the trained adapter (LoRETTA: adapter_config.json + adapter.safetensors)
      merged/              the merged Hugging Face export of a rep run
      checkpoints/step-N/  training checkpoints (distributed/checkpoint.py owns their inside)
      metrics.jsonl        one JSON record per step and per eval
      loss.png             the loss plot
      param_report.json    what DeepSpeed partitions and what stays whole
      tensorboard/         TensorBoard logs, when tensorboard is installed
      .loretta-run.lock    held by the run that owns the directory (run/lock.py)
      .loretta-run-files.json  the names above that the run claimed (run/contents.py: whose files)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..file_io import read_json_object, write_json_atomically

RUN_CONFIG = "run_config.json"
ADAPTER = "adapter"
MERGED = "merged"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
PARAM_REPORT = "param_report.json"
TENSORBOARD = "tensorboard"
LOCK = ".loretta-run.lock"
CLAIM = ".loretta-run-files.json"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __fspath__(self) -> str:
        # A RunDir is accepted wherever a path is (``RunDir(run_dir)``, ``Path(run_dir)``, open()).
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER

    @property
    def merged(self) -> Path:
        return self.root / MERGED

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def plot(self) -> Path:
        return self.root / PLOT

    @property
    def param_report(self) -> Path:
        return self.root / PARAM_REPORT

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def claim(self) -> Path:
        return self.root / CLAIM


@dataclass(frozen=True)
class RunRecord:
    """run_config.json. A training run writes every field (``finished`` and the final ones at the
    end); an adapter-format export writes ``method``, ``loretta`` and ``model`` only."""

    method: str  # rep | adp | lora
    model: str | None = None  # the base as loaded: a local directory or a hub id
    model_name: str | None = None  # the base as the user named it (--model)
    loretta: dict | None = None  # the LorettaConfig of a rep / adp run (LorettaConfig.to_dict())
    lora: dict | None = None  # the LoRA baseline's r, alpha, dropout, target_modules
    dtype: str | None = None  # float32 | bfloat16
    train: dict = field(default_factory=dict)  # every setting as it ran (flags, resolved values, global_batch)
    world_size: int | None = None
    global_batch: int | None = None
    zero_stage: int | None = None
    attn: str | None = None
    ds_config: dict | None = None  # the DeepSpeed config as it ran, every "auto" filled
    finished: bool | None = None  # set by a training run: False until it has saved its result
    final_step: int | None = None
    bad_steps: int | None = None
    final_eval: dict | None = None
    wall_time_s: float | None = None
    # Set when this run continued a checkpoint of a run with other settings (--allow_config_change):
    # {"checkpoint": path, "step": N, "changed": {setting: [there, now]}}.
    resumed_from: dict | None = None
    # --ds_config auto: the layout chosen, why, and what each alternative would need (layout.py).
    layout: dict | None = None

    def to_json(self) -> dict:
        """The JSON object, without the fields that are not set."""
        return {key: value for key, value in dataclasses.asdict(self).items()
                if value is not None and not (key == "train" and not value)}

    @classmethod
    def from_json(cls, data: dict, where: str = RUN_CONFIG) -> "RunRecord":
        """A record from run_config.json's object; keys it does not know are ignored (a newer
        version may add some). ValueError naming ``where`` when a known one has the wrong kind."""
        kinds = {"method": str, "model": str, "model_name": str, "loretta": dict, "lora": dict, "dtype": str,
                 "train": dict, "ds_config": dict, "final_eval": dict, "resumed_from": dict, "attn": str, "layout": dict,
                 "finished": bool}
        values = {}
        for item in dataclasses.fields(cls):
            if item.name not in data or data[item.name] is None:
                continue
            value, kind = data[item.name], kinds.get(item.name)
            if kind is not None and not isinstance(value, kind):
                raise ValueError(f"{where}: '{item.name}' must be a JSON {'object' if kind is dict else 'string'}, "
                                 f"got {value!r}; the file is damaged (it is written by the trainer)")
            values[item.name] = value
        if "method" not in values:
            raise ValueError(f"{where} has no 'method'; it was not written by a loretta_ds run")
        return cls(**values)

    def replace(self, **changes) -> "RunRecord":
        return dataclasses.replace(self, **changes)


def read_run_record(run_dir: str | Path) -> RunRecord | None:
    """The RunRecord of ``run_dir``, or None when it has no run_config.json; ValueError naming the file
    when it is not a valid one."""
    path = RunDir(run_dir).run_config
    if not path.is_file():
        return None
    data = read_json_object(path, "the run's record", "it is written by the trainer: restore it, or start "
                            "the run over (--overwrite_output_dir) or in another --output_dir")
    return RunRecord.from_json(data, str(path))


def write_run_record(run_dir: str | Path, record: RunRecord) -> None:
    """Write run_config.json atomically (a crash leaves the previous version, never half a file)."""
    write_json_atomically(RunDir(run_dir).run_config, record.to_json())
