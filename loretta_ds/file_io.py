"""Reading and writing the project's small safetensors files (adapters, PEFT exports).

Reading: a truncated file, or one whose header is damaged, is a user-visible error naming the
file, not a SafetensorError traceback.

Writing the way every part of a run does: with open(), so the mode follows the umask.

safetensors' own ``save_file`` creates its files owner-only (0600) whatever the umask; on a shared
cluster that hides an adapter or a PEFT export from the colleagues of the group. The small
safetensors files of the project (adapters, checkpoints' trainable tensors, PEFT exports: megabytes)
are therefore serialized in memory and written as ordinary files. The merged export, which is
large, streams through its own writer (export/safetensors_stream.py), which also uses open().
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as a safetensors file at ``path`` (replacing it), with umask-governed permissions."""
    data = save(tensors, metadata=metadata)
    with open(path, "wb") as handle:
        handle.write(data)


def read_safetensors(path: str | os.PathLike, what: str = "file") -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at ``path``; ValueError naming it when it is not one."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; the {what} is incomplete") from None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}): the {what} is damaged or "
                         "truncated; copy it again from where it was written, or write it again") from None
