"""From dataset specs (files, directories, bundled tasks, cached hub datasets; optional mixing
weights) to one `datasets.Dataset` of canonical records, checked before any tokenization.

Canonical record (every format maps to it): prompt, completion (str; the loss covers the
completion), label (the label word for classification, "" otherwise), format, source, messages
(chat: the checked turns as a JSON list, "" otherwise) and record (its 1-based number in the
source, as text, for messages about it).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets.naming import camelcase_to_snakecase  # how the datasets cache names a hub dataset

from .bundled import BUNDLED_PREFIX, BUNDLED_TASKS, DEFAULT_DATASET, bundled_path, bundled_task_names
from .chat import CHAT_COLUMNS, chat_column
from .formats import FORMAT_SPECS, check_format_name, render, resolve_format
from .spec_text import split_weight

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev", "eval")}
CANONICAL_COLUMNS = ("prompt", "completion", "label", "format", "source", "messages", "record")


@dataclass(frozen=True)
class DatasetSpec:
    """One parsed `SOURCE[:WEIGHT]` entry.

    kind: "bundled" (bundled:NAME), "file", "dir" (a directory with train/validation files) or
    "hub" (a `datasets` name, read from the local cache). weight: relative share of the
    training mix, or None (then every spec keeps its natural size).
    """

    source: str
    kind: str
    weight: float | None = None

    @property
    def path(self) -> Path | None:
        return Path(self.source).expanduser() if self.kind in ("file", "dir") else None


def _looks_like_path(source: str) -> bool:
    return (Path(source).suffix.lower() in FILE_BUILDERS
            or source.startswith((".", "/", "~")) or "\\" in source)


def _path_kind(path: Path, source: str) -> str | None:
    """"dir", "file" or None (nothing there); a name the system cannot look up is a user error."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except (OSError, ValueError) as err:  # a name too long, a NUL byte, ...
        reason = getattr(err, "strerror", None) or str(err)
        shown = source if len(source) <= 80 else source[:80] + "..."
        raise ValueError(f"dataset spec {shown!r} is not a usable path ({reason}); pass an existing file "
                         f"or directory, or a bundled dataset ({', '.join(bundled_task_names())})") from None


def parse_dataset_specs(specs: list[str] | str | None) -> list[DatasetSpec]:
    """Parse `SOURCE[:WEIGHT]` strings; None or [] means the bundled classification task.

    SOURCE: bundled:sentiment | bundled:instruct (the prefix may be left out) | a
    .json/.jsonl/.csv/.parquet file | a directory with train*/validation* files | a dataset
    name in the local `datasets` cache. A single string may hold several specs, comma-separated.
    WEIGHT: positive number; give it to all specs or to none.
    Raises FileNotFoundError for a missing file and ValueError for a bad weight or name.
    """
    if specs is None or (not isinstance(specs, str) and len(specs) == 0):
        specs = [DEFAULT_DATASET]
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    parsed = []
    for text in specs:
        text = text.strip()
        if not text:
            raise ValueError("empty dataset spec; pass a file, a directory or bundled:sentiment")
        source, weight = split_weight(text)
        if source.startswith(BUNDLED_PREFIX):
            if source[len(BUNDLED_PREFIX):] not in BUNDLED_TASKS:
                raise ValueError(f"unknown bundled dataset {source!r}; available: "
                                 f"{', '.join(bundled_task_names())}")
            parsed.append(DatasetSpec(source, "bundled", weight))
            continue
        path = Path(source).expanduser()
        kind = _path_kind(path, source)
        if source in BUNDLED_TASKS and kind is None:  # "sentiment" for "bundled:sentiment"
            parsed.append(DatasetSpec(BUNDLED_PREFIX + source, "bundled", weight))
        elif kind == "dir":
            parsed.append(DatasetSpec(source, "dir", weight))
        elif kind == "file":
            if path.suffix.lower() not in FILE_BUILDERS:
                raise ValueError(f"{source}: unsupported file type {path.suffix!r}; use one of "
                                 f"{', '.join(FILE_BUILDERS)}")
            parsed.append(DatasetSpec(source, "file", weight))
        elif _looks_like_path(source):
            hint = ""
            if ":" in source:
                hint = " (a mixing weight goes last and must be a positive number, e.g. data.jsonl:0.5)"
            raise FileNotFoundError(f"dataset file {source!r} does not exist{hint}; check the path "
                                    f"or use a bundled dataset ({', '.join(bundled_task_names())})")
        else:
            parsed.append(DatasetSpec(source, "hub", weight))
    weighted = [s.weight is not None for s in parsed]
    if any(weighted) and not all(weighted):
        raise ValueError("give a mixing weight to every dataset spec or to none, e.g. "
                         "a.jsonl:0.7 b.jsonl:0.3; specs without one: "
                         + ", ".join(s.source for s in parsed if s.weight is None))
    return parsed


# --- reading ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_datasets():
    # One progress bar per small file on every rank is noise; restore the caller's setting after.
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _find_encoding_error(path: Path) -> str | None:
    """Where a text file stops being UTF-8 ("line N, column C: byte 0xE9 ..."), or None.

    The readers would fail with a bare UnicodeDecodeError that names neither the file nor the
    line; reading the bytes one line at a time finds the spot with bounded memory.
    """
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                column = len(line[:err.start].decode("utf-8")) + 1
                return (f"line {number}, column {column}: byte 0x{line[err.start]:02X} is not UTF-8 text "
                        f"({err.reason})")
    return None


# Python's JSON reader recurses once per level of nesting; a record nested some thousand levels deep
# (no training record is) would end the process with a RecursionError naming nothing.
TOO_DEEP = ("nested deeper than the JSON reader allows (lists or objects inside each other about a thousand "
            "levels deep); a record holds text fields such as prompt, completion or messages")


def _find_json_error(path: Path) -> str | None:
    """Where a JSON / JSON-lines file is malformed ("line N: reason"), or None if it parses as records.

    Runs before `datasets` reads the file, not only after it fails: its JSON reader crashes the
    whole process (a segmentation fault, no message) on some malformed files, e.g. a line holding
    only `null`. JSON lines are checked one line at a time, so memory stays bounded.
    """
    with path.open(encoding="utf-8-sig", errors="replace", newline="\n") as handle:
        start = ""
        while not start:
            chunk = handle.read(1 << 16)
            if not chunk:
                return "the file is empty"
            start = chunk.lstrip()
        handle.seek(0)
        if start.startswith("["):  # one JSON array of records
            try:
                records = json.loads(handle.read())
            except json.JSONDecodeError as err:
                return f"line {err.lineno}, column {err.colno}: {err.msg}"
            except RecursionError:
                return f"a value is {TOO_DEEP}"
            for index, record in enumerate(records):
                if not isinstance(record, dict):
                    return f"array element {index + 1} is a JSON {_json_kind(record)}, not an object"
                problem = _chat_shape_error(record)
                if problem:
                    return f"array element {index + 1}: {problem}"
            return None
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if number == 1 and _is_one_json_object(path):
                    return None  # one (pretty-printed) JSON object: datasets reads it as one record
                return f"line {number}, column {err.colno}: {err.msg}"
            except RecursionError:
                return f"line {number}: a value is {TOO_DEEP}"
            if not isinstance(record, dict):
                return f"line {number} is a JSON {_json_kind(record)}, not an object"
            problem = _chat_shape_error(record)
            if problem:
                return f"line {number}: {problem}"
    return None


def _chat_shape_error(record: dict) -> str | None:
    # The JSON reader cannot load a column that is a list in one record and text in another,
    # and its error names neither; say which record it is.
    for column in CHAT_COLUMNS:
        if column in record and not isinstance(record[column], list):
            return (f"{column} is a JSON {_json_kind(record[column])}, not a list of turns "
                    f'(e.g. [{{"role": "user", "content": "..."}}])')
    return None


def _json_kind(value) -> str:
    """A parsed value's type for messages: "null" rather than Python's NoneType."""
    return "null" if value is None else type(value).__name__


def _is_one_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8-sig", errors="replace")), dict)
    except (json.JSONDecodeError, RecursionError):
        return False


def _read_files(paths: list[Path], label: str) -> datasets.Dataset:
    builder = FILE_BUILDERS[paths[0].suffix.lower()]
    if len({FILE_BUILDERS[p.suffix.lower()] for p in paths}) > 1:
        raise ValueError(f"{label}: the files {[str(p) for p in paths]} mix file types; keep one type")
    for path in paths:
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty: it holds no records; add records or remove it")
        problem = _find_encoding_error(path) if builder != "parquet" else None
        if problem:
            raise ValueError(f"{path}: {problem}; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
        problem = _find_json_error(path) if builder == "json" else None
        if problem:
            raise ValueError(f"{path}: malformed JSON, {problem}; fix that line "
                             f"(JSON lines: one object per line)")
    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files=[str(p) for p in paths], split="train")
    except Exception as err:  # noqa: BLE001 - re-raised below with the file and the reader's reason
        cause = err.__cause__ or err
        names = ", ".join(str(p) for p in paths)
        raise ValueError(f"could not read {names} as {builder}: {type(cause).__name__}: {cause}; "
                         f"check that the file is valid {builder}") from err


def _split_files(directory: Path, split: str) -> list[Path]:
    found = []
    for folder in (directory, directory / "data"):  # flat, or the hub's data/ layout
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in FILE_BUILDERS or not path.is_file():
                continue
            stem = path.stem.lower()
            for alias in SPLIT_ALIASES[split]:
                if (stem == alias or stem.startswith((alias + "-", alias + "_"))
                        or stem.endswith(("-" + alias, "_" + alias))):
                    found.append(path)
                    break
    return found


def has_split(spec: DatasetSpec, split: str) -> bool:
    """Whether the spec brings its own split (a single file only has "train")."""
    if spec.kind == "bundled":
        return split in BUNDLED_TASKS[spec.source[len(BUNDLED_PREFIX):]]
    if spec.kind == "file":
        return split == "train"
    if spec.kind == "dir":
        return bool(_split_files(spec.path, split))
    return _read_hub(spec, split) is not None


def _in_datasets_cache(name: str) -> bool:
    """Whether ``datasets`` holds a prepared copy of hub dataset ``name`` in its local cache (the
    layout its cache fallback reads: CACHE/<namespace>___<snake_case name>/<config>/<version>/<hash>)."""
    parts = name.split("/")
    if len(parts) > 2 or not all(parts):
        return False
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


def _read_hub(spec: DatasetSpec, split: str) -> datasets.Dataset | None:
    if not _in_datasets_cache(spec.source):
        # Checked first: asking the hub about a mistyped name costs a minute of retries on a
        # machine without internet, and a compute node of a cluster often has none.
        raise FileNotFoundError(
            f"{spec.source!r} is not a file, a directory, a bundled dataset "
            f"({', '.join(bundled_task_names())}) or a dataset in the local datasets cache "
            f"({datasets.config.HF_DATASETS_CACHE}); check the path, or download the dataset once where the "
            f"hub is reachable (python -c \"import datasets; datasets.load_dataset('{spec.source}')\")")
    try:
        with _quiet_datasets():
            return datasets.load_dataset(spec.source, split=split)
    except ValueError as err:
        if "split" in str(err).lower():  # the dataset exists but has no such split
            return None
        raise ValueError(f"dataset {spec.source!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - hub errors vary by version; all mean "not available"
        raise FileNotFoundError(
            f"{spec.source!r} is not a file, a directory, a bundled dataset "
            f"({', '.join(bundled_task_names())}) or a dataset in the local datasets cache "
            f"({type(err).__name__}); check the path, or download the dataset on a machine with "
            f"internet access first") from None


def read_raw(spec: DatasetSpec, split: str) -> tuple[datasets.Dataset, str]:
    """The spec's split as loaded (its own columns) and a label naming its source for messages."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_ALIASES)}")
    if spec.kind == "bundled":
        path = bundled_path(spec.source, split)
        return _read_files([path], spec.source), f"{spec.source} ({path})"
    if spec.kind == "file":
        if split != "train":
            raise ValueError(f"{spec.source} is a single file: it is the train split; pass "
                             f"validation data separately or use a directory with split files")
        return _read_files([spec.path], spec.source), spec.source
    if spec.kind == "dir":
        files = _split_files(spec.path, split)
        if not files:
            raise FileNotFoundError(
                f"directory {spec.source} has no {split} file; name one "
                f"{'/'.join(SPLIT_ALIASES[split])}.jsonl (or .json/.csv/.parquet)")
        return _read_files(files, spec.source), ", ".join(str(f) for f in files)
    raw = _read_hub(spec, split)
    if raw is None:
        raise ValueError(f"dataset {spec.source!r} has no {split!r} split")
    return raw, spec.source


# --- checking and converting to canonical records ---------------------------------------------------


def _text_column(raw: datasets.Dataset, column: str, label: str, optional: bool) -> list[str]:
    values = raw[column] if column in raw.column_names else [""] * len(raw)
    for index, value in enumerate(values):
        if value is None and optional:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{label}: record {index + 1} has {column}={value!r} "
                             f"({type(value).__name__}); {column} must be text. Fix or remove the record")
    return ["" if v is None else v for v in values]


def _labels(raw: datasets.Dataset, label: str, label_words: list[str] | None) -> list[str]:
    feature = raw.features.get("label")
    names = feature.names if isinstance(feature, datasets.ClassLabel) else label_words
    words = []
    for index, value in enumerate(raw["label"]):
        if isinstance(value, str):
            word = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool) and names is not None:
            if not 0 <= value < len(names):
                raise ValueError(f"{label}: record {index + 1} has label {value}, outside the "
                                 f"label set {list(names)} (indices 0..{len(names) - 1})")
            word = names[value]
        elif isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"{label}: labels are integers (record {index + 1}: {value}); "
                             "label-word scoring needs words: write each label as its word in the file "
                             "(e.g. 0 -> negative, 1 -> positive), or use a hub dataset whose label column "
                             "names its classes (a ClassLabel)")
        else:
            raise ValueError(f"{label}: record {index + 1} has label {value!r}; a label must be "
                             f"a word (or an integer with label_words given)")
        if not word:
            raise ValueError(f"{label}: record {index + 1} has an empty label; fix or remove it")
        if label_words is not None and word not in label_words:
            raise ValueError(f"{label}: record {index + 1} has label {word!r}, which is not in "
                             f"the label set {list(label_words)}; fix the record or add the "
                             f"label to the label set")
        words.append(word)
    return words


def canonicalize(raw: datasets.Dataset, fmt: str, label: str,
                 label_words: list[str] | None = None) -> tuple[datasets.Dataset, str]:
    """Check raw records against fmt ("auto" detects it) and map them to canonical records.

    Returns (dataset with CANONICAL_COLUMNS, resolved format). Raises ValueError naming `label`
    (the source) for an empty dataset, columns that do not fit, non-text fields and labels
    outside label_words.
    """
    if len(raw) == 0:
        raise ValueError(f"{label} holds no records; add records or remove it from the data specs")
    resolved = resolve_format(fmt, raw.column_names, label)
    numbers = [str(i + 1) for i in range(len(raw))]
    if resolved == "chat":
        blank = [""] * len(raw)
        canonical = datasets.Dataset.from_dict({
            "prompt": blank, "completion": blank, "label": blank, "format": ["chat"] * len(raw),
            "source": [label] * len(raw), "messages": chat_column(raw, label), "record": numbers})
        return canonical, resolved
    spec = FORMAT_SPECS[resolved]
    fields = {c: _text_column(raw, c, label, optional=False) for c in spec.required if c != "label"}
    fields.update({c: _text_column(raw, c, label, optional=True) for c in spec.optional})
    labels = _labels(raw, label, label_words) if resolved == "classification" else [""] * len(raw)
    prompts, completions = [], []
    for index in range(len(raw)):
        record = {c: fields[c][index] for c in fields}
        record["label"] = labels[index]
        prompt, completion = render(resolved, record)
        prompts.append(prompt)
        completions.append(completion)
    canonical = datasets.Dataset.from_dict({
        "prompt": prompts, "completion": completions, "label": labels,
        "format": [resolved] * len(raw), "source": [label] * len(raw),
        "messages": [""] * len(raw), "record": numbers})
    return canonical, resolved


# --- mixing ----------------------------------------------------------------------------------------


def mix_counts(sizes: list[int], weights: list[float] | None) -> list[int]:
    """Records each part contributes: its size without weights, else its weighted share of the
    total size (at least 1)."""
    if weights is None:
        return list(sizes)
    total, weight_sum = sum(sizes), sum(weights)
    return [max(1, round(w / weight_sum * total)) for w in weights]


def mix(parts: list[datasets.Dataset], weights: list[float] | None, seed: int) -> datasets.Dataset:
    """Concatenate parts; with weights, resample each to its share of the total size.

    Part i gets round(w_i / sum(w) * sum(len)) records: whole copies of the part plus a seeded
    sample without replacement of the rest, so a small task can be upsampled and a large one
    subsampled, deterministically in seed.
    """
    if weights is None or len(parts) == 1:
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    chosen = []
    counts = mix_counts([len(p) for p in parts], weights)
    for index, (part, count) in enumerate(zip(parts, counts)):
        copies, rest = divmod(count, len(part))
        rng = np.random.default_rng([seed, index])
        indices = np.concatenate([np.tile(np.arange(len(part)), copies),
                                  np.sort(rng.choice(len(part), size=rest, replace=False))])
        chosen.append(part.select(indices.tolist()))
    return datasets.concatenate_datasets(chosen)


def load_records(specs: list[str] | list[DatasetSpec] | None, fmt: str = "auto",
                 split: str = "train", seed: int = 0,
                 label_words: list[str] | None = None) -> tuple[datasets.Dataset, str]:
    """Load, check and (for split="train", when weighted) mix the specs' records.

    Returns (canonical dataset, format), format being "mixed" when the specs resolve to
    different formats. Every spec must have `split` (see has_split); weights apply to train only.
    """
    check_format_name(fmt)
    parsed = as_specs(specs)
    parts, formats = [], []
    for spec in parsed:
        raw, label = read_raw(spec, split)
        canonical, resolved = canonicalize(raw, fmt, label, label_words)
        parts.append(canonical)
        formats.append(resolved)
    weights = [s.weight for s in parsed] if split == "train" and parsed[0].weight is not None else None
    return mix(parts, weights, seed), combined_format(formats)


def combined_format(formats: list[str]) -> str:
    """The one format shared by all parts, or "mixed"."""
    return formats[0] if len(set(formats)) == 1 else "mixed"


def as_specs(specs) -> list[DatasetSpec]:
    """Specs parsed once: DatasetSpec objects pass through, strings are parsed."""
    if specs and all(isinstance(s, DatasetSpec) for s in specs):
        return list(specs)
    return parse_dataset_specs(specs)
