"""What a run directory holds: this project's run files, and anything else (a user's files).

A run writes a known set of names into OUTPUT_DIR and replaces or deletes some of them (the
merged export, old and torn checkpoints). Anything else there is not its own, and a run never
deletes it: a new run refuses a directory holding such files (the user probably meant another
one) unless --overwrite_output_dir says to run there anyway, and every run refuses files of a
user's inside the places it replaces (``merged/``, ``checkpoints/step-N``), with or without it.
The base model's directory is never an output directory.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..adapters.io import CONFIG_NAME, WEIGHTS_NAME
from ..adapters.peft_export import PEFT_CONFIG, PEFT_WEIGHTS
from ..distributed import checkpoint as ckpt
from ..export.provenance import foreign_files as export_foreign_files
from ..export.staging import MARKER_NAME as EXPORT_MARKER
from .directory import ADAPTER, CHECKPOINTS, LOCK, MERGED, METRICS, PARAM_REPORT, PLOT, RUN_CONFIG, TENSORBOARD

RUN_FILES = {RUN_CONFIG, PARAM_REPORT, METRICS, PLOT, LOCK}
# What an interrupted atomic replacement of a run file leaves (file_io.replace_atomically).
_RUN_FILE_TEMP = re.compile(r"^\.(%s)\.\d+\.tmp$" % "|".join(re.escape(name) for name in (RUN_CONFIG, PARAM_REPORT)))
ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME,  # LoRETTA (save_adapter)
                 PEFT_CONFIG, PEFT_WEIGHTS, "README.md"}  # the PEFT LoRA baseline (PEFT's save_pretrained)
STAGING = (f"{MERGED}.export-incomplete", f"{MERGED}.export-replaced")


@dataclass
class Survey:
    """OUTPUT_DIR's entries by owner (paths relative to it)."""

    foreign: list[str] = field(default_factory=list)  # not this project's; never touched
    collisions: list[str] = field(default_factory=list)  # not this project's, where a run replaces files
    own: list[Path] = field(default_factory=list)  # this project's run files (what a start-over clears)


def _files_under(path: Path, root: Path) -> list[str]:
    files = [str(p.relative_to(root)) for p in sorted(path.rglob("*")) if p.is_file()]
    return files or [f"{path.relative_to(root)}/"]


def _sort_files(directory: Path, root: Path, result: Survey, is_own: Callable[[Path], bool]) -> None:
    """A directory the run adds files to (adapter/, tensorboard/): its own files, the rest foreign."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() or p.is_symlink()]
    foreign = [p for p in files if p.is_symlink() or not is_own(p)]
    result.foreign += [str(p.relative_to(root)) for p in foreign]
    if foreign:
        result.own += [p for p in files if p not in foreign]
    else:
        result.own.append(directory)


def survey(output_dir: str | Path) -> Survey:
    root = Path(output_dir)
    result = Survey()
    if not root.is_dir():
        return result
    for entry in sorted(root.iterdir()):
        name = entry.name
        if (name in RUN_FILES or _RUN_FILE_TEMP.match(name)) and entry.is_file() and not entry.is_symlink():
            result.own.append(entry)
        elif name == ADAPTER and entry.is_dir() and not entry.is_symlink():
            _sort_files(entry, root, result, lambda p: p.name in ADAPTER_FILES or p.name.startswith(".adapter"))
        elif name == MERGED and entry.is_dir() and not entry.is_symlink():
            extra = export_foreign_files(entry)
            if extra is None:  # not an export of this project: the final export would replace it
                if any(entry.iterdir()):
                    result.collisions += _files_under(entry, root)
                else:
                    result.own.append(entry)
            elif extra:
                result.collisions += [f"{name}/{f}" for f in extra]
            else:
                result.own.append(entry)
        elif name in STAGING and entry.is_dir():
            if name.endswith("incomplete") and not (entry / EXPORT_MARKER).is_file() and any(entry.iterdir()):
                result.collisions += _files_under(entry, root)
            else:
                result.own.append(entry)
        elif name == TENSORBOARD and entry.is_dir() and not entry.is_symlink():
            _sort_files(entry, root, result, lambda p: p.name.startswith("events.out.tfevents."))
        elif name == CHECKPOINTS and entry.is_dir() and not entry.is_symlink():
            for sub in sorted(entry.iterdir()):
                checkpoint_like = sub.name.startswith((ckpt.TMP_PREFIX, "step-"))
                if checkpoint_like and sub.is_dir() and not sub.is_symlink():
                    extra = ckpt.foreign_files(sub)
                    if extra:
                        result.collisions += [f"{name}/{sub.name}/{f}" for f in extra]
                    else:
                        result.own.append(sub)
                elif checkpoint_like:
                    result.collisions.append(f"{name}/{sub.name}")
                else:
                    result.foreign.append(f"{name}/{sub.name}" + ("/" if sub.is_dir() else ""))
        elif name in RUN_FILES | {ADAPTER, MERGED, TENSORBOARD, CHECKPOINTS}:
            result.collisions.append(name)  # one of the run's names, of the wrong kind (or a link)
        else:
            result.foreign.append(name + ("/" if entry.is_dir() else ""))
    return result


def listing(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _within(path: Path, ancestor: Path) -> bool:
    return path == ancestor or ancestor in path.parents


def check_not_model_dir(output_dir: str | Path, model_path: str) -> None:
    """Refuse an output directory that is, is inside or contains the base model's directory."""
    model = Path(model_path).expanduser()
    if not model.is_dir():
        return  # a hub id: the model lives in the Hugging Face cache
    out, model = Path(output_dir).expanduser().resolve(), model.resolve()
    if _within(out, model) or _within(model, out):
        relation = "is" if out == model else ("is inside" if _within(out, model) else "contains")
        raise ValueError(f"--output_dir {output_dir} {relation} the base model's directory {model}; a run writes "
                         "checkpoints and a merged model there, so it is never the model's folder: choose "
                         "another --output_dir")


def check_collisions(output_dir: str | Path, found: Survey) -> None:
    """Refuse files of a user's where the run would replace or delete files (with any flag)."""
    if found.collisions:
        raise ValueError(f"{output_dir} holds files this trainer did not write where it replaces files "
                         f"({listing(found.collisions)}): the run would delete them. Nothing was changed; "
                         "choose another --output_dir, or move them out")


def check_new_run_dir(output_dir: str | Path, found: Survey, overwrite_output_dir: bool) -> None:
    """A new run starts only in an empty directory, or one of this project's run files alone,
    unless --overwrite_output_dir (which still never touches the files it lists)."""
    check_collisions(output_dir, found)
    if found.foreign and not overwrite_output_dir:
        raise ValueError(f"--output_dir {output_dir} already holds files that are not this trainer's run files "
                         f"({listing(found.foreign)}); is it the right directory? Choose another (new or empty) "
                         "--output_dir, or pass --overwrite_output_dir to train there anyway (files that are "
                         "not the run's are left untouched)")


def clear_previous_run(output_dir: str | Path, found: Survey, log: Callable[[str], None]) -> None:
    """Start over: remove the project's own files of an earlier run (``found.own``), nothing else."""
    root, removed = Path(output_dir), []
    for path in found.own:
        if path.name == LOCK or not path.exists():
            continue  # the lock is this run's now
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(str(path.relative_to(root)))
    if removed:
        log(f"--overwrite_output_dir: starting over; removed the earlier run's {listing(removed, 8)}")
