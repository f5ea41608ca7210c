"""What an export reads: the trained adapter, the run's config, and where the base model lives.

A training OUTPUT_DIR holds ``run_config.json`` (a RunRecord, loretta_ds.run.directory: ``model``, the
base path or hub id, ``method``, ``loretta``, the LorettaConfig) and ``adapter/`` (save_adapter's
output), so nothing is typed twice. ``--adapter DIR --base MODEL`` names the two directly. An ``adapter``-format export is
itself a valid RUN_DIR (adapter files and run_config.json side by side).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.config import LorettaConfig
from ..adapters.io import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config
from ..run.directory import RUN_CONFIG, RunDir, RunRecord, read_run_record
# A Hugging Face repo id: "name" or "owner/name" made of letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ExportSource:
    """A trained adapter and what it was trained on.

    adapter_dir: holds adapter_config.json + adapter.safetensors.
    config / meta: its LorettaConfig and full adapter metadata (meta["target_shapes"]:
        {module: [out, in]}).
    base_name: the base model as the user or the run named it (path or hub id); None if unknown.
    run: the run's record (run_config.json), or None when the adapter was given directly.
    """

    adapter_dir: Path
    config: LorettaConfig
    meta: dict
    base_name: str | None
    run_dir: Path | None = None
    run: RunRecord | None = None
    _base_dir: Path | None = field(default=None, repr=False)

    def base_dir(self) -> Path:
        """The base model's local directory (resolved once; hub ids through the HF cache)."""
        if self._base_dir is None:
            if not self.base_name:
                raise ValueError("the base model is unknown: pass --base with the Hugging Face model "
                                 "directory or hub id the adapter was trained on")
            self._base_dir = resolve_base(self.base_name, self.run_dir)
        return self._base_dir


def _adapter_dir_of(run_dir: Path) -> Path:
    """A training run keeps the adapter in adapter/; an adapter-format export keeps it at the top."""
    for candidate in (RunDir(run_dir).adapter, run_dir):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"{run_dir} holds no LoRETTA adapter: expected {run_dir}/adapter/{CONFIG_NAME} and "
        f"{WEIGHTS_NAME} (written at the end of training). Pass a finished run's OUTPUT_DIR, "
        "or the adapter directly with --adapter DIR --base MODEL."
    )


def resolve_source(run_dir: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
                   base: str | None = None) -> ExportSource:
    """Find the adapter, its config and the base model's name; validate them, write nothing.

    Either ``run_dir`` (optionally with ``base`` overriding the run's model, e.g. a local copy of
    a hub model), or ``adapter`` (+ ``base``, needed for the merged format and --verify).
    """
    if (run_dir is None) == (adapter is None):
        raise ValueError("give either RUN_DIR (a training output dir) or --adapter DIR (with --base MODEL), "
                         "not both and not neither")
    run = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {run_dir} does not exist; pass a training OUTPUT_DIR")
        adapter_dir = _adapter_dir_of(run_dir)
        try:
            run = read_run_record(run_dir)
        except ValueError as err:
            raise ValueError(f"{err}; or pass --adapter and --base") from None
        if run is None and base is None:
            raise FileNotFoundError(f"{run_dir} has no {RUN_CONFIG}, so the base model is unknown; "
                                    "pass --base MODEL")
    else:
        adapter_dir = Path(adapter)
    cfg, meta = read_adapter_config(adapter_dir)

    if run is not None:
        method = run.method
        if method == "lora":
            raise ValueError(
                f"{run_dir} is a plain LoRA run, not a LoRETTA one: this command exports LoRETTA "
                "adapters. Merge a PEFT LoRA adapter with peft (PeftModel.from_pretrained(base, "
                "adapter).merge_and_unload()).")
        if method != cfg.method:
            raise ValueError(f"{run_dir}/{RUN_CONFIG} says method {method!r} but the adapter in "
                             f"{adapter_dir} is LoRETTA_{cfg.method}; the run directory is inconsistent")
        if run.loretta is not None:
            recorded = LorettaConfig.from_dict(run.loretta).to_dict()
            diffs = [k for k, v in cfg.to_dict().items() if recorded.get(k) != v]
            if diffs:
                raise ValueError(f"{run_dir}/{RUN_CONFIG} and {adapter_dir}/{CONFIG_NAME} disagree on "
                                 f"{', '.join(diffs)}; the adapter file is the one the tensors fit, "
                                 "export with --adapter and --base to use it alone")
    base_name = base if base is not None else (run.model if run is not None else None)
    if base_name is None:
        base_name = (meta.get("base") or {}).get("_name_or_path") or None
    return ExportSource(adapter_dir=adapter_dir, config=cfg, meta=meta, base_name=base_name,
                        run_dir=run_dir, run=run)


def resolve_base(name: str, run_dir: Path | None = None) -> Path:
    """Local directory of a base model: an existing path, else a hub id in the local HF cache.

    Never downloads: exports run where the training ran, often without internet access.
    """
    candidates = [Path(name).expanduser()]
    if run_dir is not None and not Path(name).is_absolute():
        candidates.append(run_dir / name)  # a relative path recorded by a run started elsewhere
    for path in candidates:
        if path.is_dir():
            return path
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return _from_hf_cache(name)
    raise FileNotFoundError(f"base model {name!r} is not a directory; pass --base with the Hugging Face "
                            "model directory (or cached hub id) the adapter was trained on")


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise FileNotFoundError(
            f"base model {repo_id!r} is neither a local directory nor in the Hugging Face cache "
            f"({HF_HUB_CACHE}). Download it first (huggingface-cli download {repo_id}), set HF_HOME "
            "to the cache that has it, or pass --base /path/to/the/model/dir."
        ) from None
