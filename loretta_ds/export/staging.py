"""Write an export into a temporary sibling directory and rename it into place only when complete.

OUT_DIR therefore either does not exist, holds the previous complete export (``--overwrite``), or
holds the new complete one; never a half-written model. The temporary directory is named
``<OUT_DIR>.export-incomplete`` and holds a marker file, locked by the exporting process for as
long as it lives: a later export finds a stale one (its lock is free because the kernel dropped
it with the killed process), says so and removes it; a live one (lock held) is an error.

What an export deletes is only ever an export's: ``--overwrite`` replaces an OUT_DIR only when it
is an export of this project holding nothing else (provenance.is_own_export), and a directory at
the temporary or the replaced name is removed only when an export made it (``is_own_leftover``);
a user's folder of either name is refused, never deleted.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from ..file_io import fsync_dir
from ..run.directory import CHECKPOINTS, RUN_CONFIG
from .provenance import PROVENANCE_NAME, is_own_export

TEMP_SUFFIX = ".export-incomplete"
REPLACED_SUFFIX = ".export-replaced"
MARKER_NAME = "EXPORT_INCOMPLETE"


def temp_dir_for(out_dir: Path) -> Path:
    return out_dir.parent / (out_dir.name + TEMP_SUFFIX)


def is_own_leftover(path: Path) -> bool:
    """Whether ``path`` (an OUT_DIR.export-incomplete or .export-replaced directory) was left by an
    export: it holds the marker (an interrupted export), is empty (killed as it was created), or is a
    complete export (killed between dropping the marker and the rename, or a replaced old export)."""
    if not path.is_dir() or path.is_symlink():
        return False
    return (path / MARKER_NAME).is_file() or not any(path.iterdir()) or is_own_export(path)


def _is_within(path: Path, ancestor: Path) -> bool:
    return path == ancestor or ancestor in path.parents


def _owner_alive(marker: Path) -> tuple[bool, str]:
    """Whether the export that owns ``marker`` is still running, and a description of it."""
    try:
        info = json.loads(marker.read_text())
        who = f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
    except (OSError, ValueError):
        info, who = {}, "unknown owner"
    try:
        with open(marker, "r+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EAGAIN):
                    return True, who
                raise
            fcntl.lockf(f, fcntl.LOCK_UN)
            return False, who
    except FileNotFoundError:
        return False, who
    except OSError:
        # A filesystem without POSIX locks: fall back to the recorded pid, on the same host only.
        if info.get("host") != socket.gethostname():
            return True, who + " (another host; cannot tell whether it still runs)"
        try:
            os.kill(int(info.get("pid", -1)), 0)
            return True, who
        except (OSError, ValueError):
            return False, who


def _training_checkpoints(path: Path) -> Path | None:
    """The training run's checkpoints/ folder that ``path`` is or lies in, if any."""
    for folder in (path, *path.parents):
        if folder.name == CHECKPOINTS and ((folder.parent / RUN_CONFIG).is_file() or (
                folder.is_dir() and any(p.name.startswith(("step-", ".tmp-step-")) for p in folder.iterdir()))):
            return folder
    return None


class StagedOutput:
    """OUT_DIR's lifecycle: ``check()`` (no writes), then ``with staged: ... staged.publish()``.

    protected: directories the export reads (base model, adapter, run dir); OUT_DIR may be
    neither one of them nor contain one, since --overwrite deletes the old OUT_DIR.
    base_dir: the base model's directory, which OUT_DIR may not lie in either (an export must
    never write into the model it came from); nor may it lie in a training run's checkpoints/.
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False,
                 protected: list[Path] | None = None, log: Callable[[str], None] = print,
                 base_dir: Path | None = None):
        self.out_dir = Path(out_dir).expanduser().absolute()
        self.temp_dir = temp_dir_for(self.out_dir)
        self.overwrite, self.log = overwrite, log
        self.protected = [Path(p).resolve() for p in (protected or [])]
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else None
        self._marker_file = None
        self._stale = False

    @property
    def replaced_dir(self) -> Path:
        """Where the old OUT_DIR waits while the new export takes its place."""
        return self.out_dir.parent / (self.out_dir.name + REPLACED_SUFFIX)

    def check(self) -> None:
        """Every reason not to start, raised before anything is written."""
        out_real = self.out_dir.resolve()
        for path in self.protected:
            if _is_within(path, out_real):
                raise ValueError(f"OUT_DIR {self.out_dir} is or contains {path}, which this export reads; "
                                 "choose another OUT_DIR")
        if self.base_dir is not None and _is_within(out_real, self.base_dir):
            raise ValueError(f"OUT_DIR {self.out_dir} is inside the base model's directory {self.base_dir}; an "
                             "export never writes into the model it came from: choose an OUT_DIR outside it")
        checkpoints = _training_checkpoints(out_real)
        if checkpoints is not None:
            raise ValueError(f"OUT_DIR {self.out_dir} is inside {checkpoints}, a training run's checkpoints "
                             "(an export there could replace them, and a resume would take it for a "
                             "checkpoint): choose an OUT_DIR outside checkpoints/, e.g. the run's merged/")
        if (out_real / CHECKPOINTS).is_dir() and _training_checkpoints(out_real / CHECKPOINTS):
            raise ValueError(f"OUT_DIR {self.out_dir} holds a training run ({out_real / CHECKPOINTS}); "
                             "--overwrite would delete it: choose another OUT_DIR")
        if self.out_dir.is_symlink():
            # The export replaces OUT_DIR as a whole by renaming it, which would replace the link
            # itself (or fail), not what it points to.
            raise ValueError(f"OUT_DIR {self.out_dir} is a symbolic link (to {out_real}); pass the directory it "
                             f"points to ({out_real}) or another OUT_DIR")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"OUT_DIR {self.out_dir} exists and is not a directory; choose another path")
        if self.out_dir.is_dir() and any(self.out_dir.iterdir()) and not self.overwrite:
            raise ValueError(f"OUT_DIR {self.out_dir} is not empty; pass --overwrite to replace it "
                             "(the old contents stay until the new export is complete) or choose another OUT_DIR")
        if self.out_dir.is_dir() and any(self.out_dir.iterdir()) and not is_own_export(self.out_dir):
            raise ValueError(f"OUT_DIR {self.out_dir} is not an export of this program (no {PROVENANCE_NAME} "
                             "listing every file in it), and --overwrite replaces only those: it would delete "
                             "files this program did not write. Nothing was changed; choose another OUT_DIR, "
                             "or move its files out")
        for leftover in (self.temp_dir, self.replaced_dir):
            if (leftover.exists() or leftover.is_symlink()) and not is_own_leftover(leftover):
                raise ValueError(f"{leftover} exists and was not left by an export of this program (the name "
                                 f"an export uses while it writes {self.out_dir.name}); nothing was changed: "
                                 "rename or move it, or choose another OUT_DIR")
        if self.temp_dir.exists():
            alive, who = _owner_alive(self.temp_dir / MARKER_NAME)
            if alive:
                raise ValueError(f"another export into {self.out_dir} is running ({who}); wait for it, or "
                                 f"stop it and delete {self.temp_dir}")
            self._stale = True
            self._stale_owner = who

    def free_bytes(self) -> int:
        parent = self.out_dir.parent
        while not parent.exists():
            parent = parent.parent
        return shutil.disk_usage(parent).free

    def __enter__(self) -> "StagedOutput":
        if self._stale:
            self.log(f"removing {self.temp_dir}, left by an interrupted export ({self._stale_owner})")
            shutil.rmtree(self.temp_dir)
        if self.replaced_dir.is_dir():  # an old export a killed one was replacing (check() made sure)
            self.log(f"removing {self.replaced_dir}, an earlier export left by an interrupted one")
            shutil.rmtree(self.replaced_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir()
        marker = self.temp_dir / MARKER_NAME
        self._marker_file = open(marker, "w+")
        try:
            fcntl.lockf(self._marker_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # no POSIX locks here: the pid and host below are the fallback
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S"), "out_dir": str(self.out_dir),
                   "note": "an export in progress or interrupted; the next export removes this directory"},
                  self._marker_file)
        self._marker_file.flush()
        return self

    @property
    def path(self) -> Path:
        """Where to write files now (the temporary directory)."""
        return self.temp_dir

    def publish(self) -> Path:
        """Make the staged export OUT_DIR: fsync, drop the marker, rename (replacing an old one)."""
        fsync_dir(self.temp_dir)
        (self.temp_dir / MARKER_NAME).unlink()
        replaced = None
        if self.out_dir.exists():
            if any(self.out_dir.iterdir()):
                replaced = self.replaced_dir
                if replaced.exists():
                    shutil.rmtree(replaced)
                os.rename(self.out_dir, replaced)
            else:
                self.out_dir.rmdir()
        os.rename(self.temp_dir, self.out_dir)
        fsync_dir(self.out_dir.parent)
        if replaced is not None:
            shutil.rmtree(replaced)
        self._release()
        return self.out_dir

    def _release(self) -> None:
        if self._marker_file is not None:
            self._marker_file.close()  # closing drops the lock
            self._marker_file = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.temp_dir.exists():
            # We are alive to clean up (an error, Ctrl-C): leave nothing behind. Only a killed
            # process leaves the temporary directory, which the next export removes.
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self._release()
