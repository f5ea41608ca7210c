"""One run at a time per output directory: an flock on OUTPUT_DIR/.loretta-run.lock held for the
run's whole life.

Two runs writing one directory destroy each other's work (one removes the other's half-written
checkpoint, metrics interleave), so rank 0 of a run takes an exclusive lock before it writes
anything, and keeps the file open until the process ends. The kernel drops the lock however the
process ends, SIGKILL and a node crash included (on NFS the lock server does, once the client is
gone), so a lock left over from a killed run never blocks the next one: the lock file may stay,
only a live holder counts. The file records the holder's host and pid for the message the second
run prints. Only rank 0 locks: the other ranks of the same run must not wait on it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .directory import RunDir

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class OutputDirBusy(ValueError):
    """Another live run holds OUTPUT_DIR (a user error: exit 2 with the holder named)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


class RunLock:
    """An exclusive lock on OUTPUT_DIR's lock file, held while this object lives (or release())."""

    def __init__(self, run_dir: RunDir | Path, handle, locked: bool):
        self.path = RunDir(run_dir).lock
        self._handle = handle
        self.locked = locked  # False on a filesystem without locks (then only a warning was given)

    @classmethod
    def acquire(cls, run_dir: RunDir | str | os.PathLike, create: bool, log=print) -> "RunLock | None":
        """Lock OUTPUT_DIR or raise OutputDirBusy naming the holder.

        create=False: lock the lock file only if it exists (None otherwise), writing nothing;
        a run takes the lock this way before it reads the directory, and with create=True (which
        makes the directory and the file) once its checks have passed.
        """
        run_dir = RunDir(run_dir)
        path = run_dir.lock
        while True:
            if create:
                run_dir.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
            else:
                try:
                    fd = os.open(path, os.O_RDWR)
                except FileNotFoundError:
                    return None
            handle = os.fdopen(fd, "r+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                handle.close()
                if err.errno in _BUSY:
                    raise OutputDirBusy(
                        f"{run_dir} is in use by another run ({_holder(path)}); two runs in one output "
                        "directory would overwrite each other's checkpoints. Wait for it to end (or stop it), "
                        "or choose another --output_dir") from None
                log(f"warning: cannot lock {path} ({err.strerror}; a file system without locks): a second run "
                    "started in this directory at the same time would not be detected")
                return cls(run_dir, None, locked=False)
            # The file we locked must still be the one at the path (not one unlinked meanwhile).
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(run_dir, handle, locked=True)
            handle.close()

    def record_holder(self) -> None:
        """Write who holds the lock (host, pid, start time): what a second run names."""
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.truncate()
        json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, self._handle)
        self._handle.write("\n")
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the lock
            self._handle = None
