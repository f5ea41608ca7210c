"""Small file helpers every layer uses: atomic replacement, directory fsync, JSON and safetensors
reading that names the file in its error. Imports nothing else of the package.

Writing the way every part of a run does: with open(), so the mode follows the umask.
safetensors' own ``save_file`` creates its files owner-only (0600) whatever the umask; on a shared
cluster that hides an adapter or a PEFT export from the colleagues of the group. The small
safetensors files of the project (adapters, checkpoints' trainable tensors, PEFT exports: megabytes)
are therefore serialized in memory and written as ordinary files. The merged export, which is
large, streams through its own writer (export/safetensors_stream.py), which also uses open().

Reading: a missing, truncated or damaged file is a user-visible error naming the file, not a
library's traceback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary path)`` beside ``path``, then rename it over ``path``: a crash never
    leaves a half-written file under the real name. The temporary file is a plain new file (not
    mkstemp's owner-only one), so the result's mode follows the umask; it is removed on error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomically(path: str | os.PathLike, data) -> None:
    """``data`` as indented JSON at ``path``, replaced atomically (see ``replace_atomically``)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "write it again"):
    """The JSON value in ``path``; FileNotFoundError / ValueError naming ``what`` it is, the file and
    the ``fix`` otherwise (never a JSONDecodeError or UnicodeDecodeError traceback)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory, not a JSON file; {fix}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {err.start}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno}, "
                         f"column {err.colno}; {fix}") from None


def read_json_object(path: str | os.PathLike, what: str = "file", fix: str = "write it again") -> dict:
    """Like ``read_json``, and the value must be a JSON object."""
    data = read_json(path, what, fix)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, not {type(data).__name__}; {fix}")
    return data


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as a safetensors file at ``path`` (replacing it), with umask-governed permissions."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with open(path, "wb") as handle:
        handle.write(data)


def read_safetensors(path: str | os.PathLike, what: str = "file") -> dict:
    """Every tensor of the safetensors file at ``path``; ValueError naming it when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; the {what} is incomplete") from None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}): the {what} is damaged or "
                         "truncated; copy it again from where it was written, or write it again") from None
