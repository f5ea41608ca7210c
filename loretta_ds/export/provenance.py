"""loretta_export.json: what an export was made from, and the files it wrote.

The file list lets a later run tell an export of this project (which it may replace) from a
folder a user made or added to (which it must never delete): the trainer replaces
OUTPUT_DIR/merged/, and ``export --overwrite`` an OUT_DIR, only when every file in it is one the
previous export listed (``is_own_export``).
"""
from __future__ import annotations

import json
from pathlib import Path

PROVENANCE_NAME = "loretta_export.json"


def write_provenance(directory: Path, data: dict, skip: tuple[str, ...] = ()) -> None:
    """Write ``data`` + the list of files now in ``directory`` but those named in ``skip`` (written
    last, after the export's files)."""
    files = [str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name not in skip]
    record = {**data, "files": sorted(set(files) | {PROVENANCE_NAME})}
    (directory / PROVENANCE_NAME).write_text(json.dumps(record, indent=2) + "\n")


def foreign_files(directory: Path) -> list[str] | None:
    """Files in ``directory`` that its export did not write; None when it is not an export at all.

    An export written before the file list existed counts as wholly its own.
    """
    try:
        record = json.loads((directory / PROVENANCE_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    listed = record.get("files")
    present = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    if not isinstance(listed, list):
        return []
    return [name for name in present if name not in set(listed)]


def is_own_export(directory: Path) -> bool:
    """Whether ``directory`` is an export of this project holding only the files it wrote: the one
    kind of directory an export or a run may replace."""
    return foreign_files(directory) == []
