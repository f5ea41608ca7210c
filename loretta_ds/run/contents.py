"""Whose files a run directory holds: the rule of ownership, stated once.

A file or directory is this project's only when the program itself recorded writing it, never
because of its name:

- the run's files (run_config.json, metrics.jsonl, loss.png, param_report.json, adapter/,
  tensorboard/) are its own when the run's claim, OUTPUT_DIR/.loretta-run-files.json, lists them.
  A run writes the claim once its checks have passed and before it writes anything else, so
  every name it lists was then absent or already the run's. A directory of a run made before the
  claim existed counts as claimed when it holds a run_config.json or a complete checkpoint of
  this program (both written only by it);
- a checkpoint is its own when its COMPLETE marker lists its files (distributed/checkpoint.py);
- an export (merged/, OUT_DIR) when its loretta_export.json lists every file in it
  (export/provenance.py); an export's temporary or replaced directory when it holds the export's
  marker, is empty, or is such an export (export/staging.py);
- the lock file .loretta-run.lock, the one exception, by its name: it holds no data, only who
  holds the lock, and is never deleted.

Anything else is not its own, and a run never deletes or overwrites it: a user's file at a name
the run writes or replaces (metrics.jsonl, adapter/..., merged/..., checkpoints/step-N) is
refused with any flag; other files make a new run refuse the directory (the user probably meant
another one) unless --overwrite_output_dir says to run there anyway, leaving them untouched.
The base model's directory is never an output directory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..adapters.io import CHAT_TEMPLATE_NAME, CONFIG_NAME, WEIGHTS_NAME
from ..adapters.peft_export import PEFT_CONFIG, PEFT_WEIGHTS
from ..distributed import checkpoint as ckpt
from ..export.provenance import foreign_files as export_foreign_files
from ..export.staging import is_own_leftover
from ..file_io import replace_atomically, write_json_atomically
from .directory import (ADAPTER, CHECKPOINTS, CLAIM, LOCK, MERGED, METRICS, PARAM_REPORT, PLOT, RUN_CONFIG,
                        TENSORBOARD, RunDir, read_run_record)

RUN_FILES = {RUN_CONFIG, PARAM_REPORT, METRICS, PLOT, LOCK}
# What a run claims: every name it writes at the top of OUTPUT_DIR, but checkpoints and the export
# (which carry their own records) and the lock (its own by name).
CLAIMED_NAMES = (RUN_CONFIG, PARAM_REPORT, METRICS, PLOT, ADAPTER, TENSORBOARD)
_CLAIM_KIND = "loretta_ds run files"
# What an interrupted atomic replacement of a run file leaves (file_io.replace_atomically).
_RUN_FILE_TEMP = re.compile(r"^\.(%s)\.\d+\.tmp$" % "|".join(re.escape(name) for name in (RUN_CONFIG, PARAM_REPORT)))
ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME, CHAT_TEMPLATE_NAME,  # LoRETTA (save_adapter), the chat template
                 PEFT_CONFIG, PEFT_WEIGHTS, "README.md"}  # the PEFT LoRA baseline (PEFT's save_pretrained)
STAGING = (f"{MERGED}.export-incomplete", f"{MERGED}.export-replaced")


@dataclass
class Survey:
    """OUTPUT_DIR's entries by owner (paths relative to it)."""

    foreign: list[str] = field(default_factory=list)  # not this project's; never touched
    collisions: list[str] = field(default_factory=list)  # not this project's, where a run replaces files
    own: list[Path] = field(default_factory=list)  # this project's run files (what a start-over clears)


def claim(run_dir: str | Path) -> None:
    """Record that the run in ``run_dir`` owns its names (after its checks passed, before it writes)."""
    write_json_atomically(RunDir(run_dir).claim, {"kind": _CLAIM_KIND, "names": list(CLAIMED_NAMES)})


def _claimed(root: Path) -> tuple[set[str], bool]:
    """(the names the run's claim lists, whether the claim file is the run's own)."""
    path = RunDir(root).claim
    if not path.exists() and not path.is_symlink():
        return _legacy_claim(root), False
    try:
        data = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("kind") != _CLAIM_KIND or not isinstance(data.get("names"), list):
        return set(), False  # not a claim this program wrote
    return {name for name in data["names"] if name in CLAIMED_NAMES}, True


def _legacy_claim(root: Path) -> set[str]:
    """A run directory written before the claim existed: its run record or a complete checkpoint
    (both only ever written by this program) stand for the claim."""
    try:
        record = read_run_record(root)
    except (OSError, ValueError):
        record = None
    complete, _ = ckpt.list_checkpoints(root)
    return set(CLAIMED_NAMES) if record is not None or complete else set()


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


def _unclaimed_directory(entry: Path, root: Path, result: Survey) -> None:
    """A directory at one of the run's names that the run never claimed: a user's, unless empty."""
    if any(entry.iterdir()):
        result.collisions += _files_under(entry, root)
    else:
        result.own.append(entry)


def survey(output_dir: str | Path) -> Survey:
    root = Path(output_dir)
    result = Survey()
    if not root.is_dir():
        return result
    claimed, claim_is_own = _claimed(root)
    for entry in sorted(root.iterdir()):
        name = entry.name
        temp_of = _RUN_FILE_TEMP.match(name)
        plain_file = entry.is_file() and not entry.is_symlink()
        if name == CLAIM and claim_is_own:
            result.own.append(entry)
        elif name == LOCK and plain_file:
            result.own.append(entry)
        elif temp_of and plain_file and temp_of.group(1) in claimed:
            result.own.append(entry)
        elif name in RUN_FILES and plain_file and name in claimed:
            result.own.append(entry)
        elif name in (ADAPTER, TENSORBOARD) and entry.is_dir() and not entry.is_symlink() and name not in claimed:
            _unclaimed_directory(entry, root, result)
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
        elif name in STAGING and entry.is_dir() and not entry.is_symlink():
            if is_own_leftover(entry):
                result.own.append(entry)
            else:
                result.collisions += _files_under(entry, root)
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
        elif name in RUN_FILES | {CLAIM, ADAPTER, MERGED, TENSORBOARD, CHECKPOINTS, *STAGING}:
            # One of the run's names, not the run's: a user's file, a link, or the wrong kind.
            result.collisions.append(name)
        else:
            result.foreign.append(name + ("/" if entry.is_dir() else ""))
    return result


def listing(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _within(path: Path, ancestor: Path) -> bool:
    return path == ancestor or ancestor in path.parents


def check_output_path(output_dir: str | Path) -> None:
    """--output_dir must be a directory, or a path where one can be made: not a file, a link to
    nothing, or a place on a read-only file system."""
    path = Path(output_dir).expanduser()
    if path.is_symlink() and not path.exists():
        raise ValueError(f"--output_dir {output_dir} is a symbolic link to {os.readlink(path)}, which does not "
                         "exist; create the directory it points to, or choose another --output_dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ValueError(f"--output_dir {output_dir} {where}, not a directory; choose another --output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {output_dir}: {existing} cannot be written (a read-only file system, or no "
                         "permission); choose an --output_dir you can write to")


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


@dataclass(frozen=True)
class StartState:
    """OUTPUT_DIR as a run found it, so that a start failing before its first step can leave it so
    ("a refusal changes nothing" holds for every failure before training)."""

    existed: bool
    names: frozenset[str]  # its entries then
    run_config: bytes | None  # run_config.json then (a run rewrites it at its start)

    @classmethod
    def of(cls, run_dir: str | Path) -> "StartState":
        root = Path(run_dir)
        if not root.is_dir():
            return cls(False, frozenset(), None)
        record = RunDir(root).run_config
        saved = record.read_bytes() if record.is_file() and not record.is_symlink() else None
        return cls(True, frozenset(p.name for p in root.iterdir()), saved)

    def restore(self, run_dir: str | Path) -> list[str]:
        """Remove the run's own entries that were not there, put run_config.json back, remove
        OUTPUT_DIR if the run created it and it is empty; the names of what changed."""
        root = Path(run_dir)
        if not root.is_dir():
            return []
        changed = []
        for path in survey(root).own:
            if path.relative_to(root).parts[0] in self.names or not (path.exists() or path.is_symlink()):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            changed.append(str(path.relative_to(root)))
        record = RunDir(root).run_config
        if self.run_config is not None and (not record.is_file() or record.read_bytes() != self.run_config):
            data = self.run_config
            replace_atomically(record, lambda tmp: tmp.write_bytes(data))
            changed.append(f"{RUN_CONFIG} restored")
        if not self.existed and not any(root.iterdir()):
            root.rmdir()
        return changed
