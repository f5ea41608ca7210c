"""loretta_export.json: what an export was made from, and the files it wrote.

The file list lets a later run tell an export of this project (which it may replace) from a
folder a user made or added to (which it must never delete): the trainer replaces
OUTPUT_DIR/merged/ only when every file in it is one the previous export listed.
"""
from __future__ import annotations

import json
from pathlib import Path

from .staging import MARKER_NAME

PROVENANCE_NAME = "loretta_export.json"


def write_provenance(directory: Path, data: dict) -> None:
    """Write ``data`` + the list of files now in ``directory`` (written last, after the export's files)."""
    files = [str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MARKER_NAME]
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
