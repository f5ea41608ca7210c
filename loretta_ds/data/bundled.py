"""Names and paths of the demo data shipped in loretta_ds/data/bundled/ (written by scripts/build_bundled_data.py)."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_PREFIX = "bundled:"
# task name -> split -> file. "sentiment" is the classification task (text, label), "instruct"
# the generation task (instruction, input, output), "chat" the same instructions as
# conversations of one to eight turns (messages).
BUNDLED_TASKS = {
    "sentiment": {"train": "sentiment_train.jsonl", "validation": "sentiment_validation.jsonl"},
    "instruct": {"train": "instruct_train.jsonl", "validation": "instruct_validation.jsonl"},
    "chat": {"train": "chat_train.jsonl", "validation": "chat_validation.jsonl"},
}
DEFAULT_DATASET = BUNDLED_PREFIX + "sentiment"
CORPUS_FILE = "corpus.txt"
# corpus.txt holds one document per block; blocks are separated by one blank line.
CORPUS_SEPARATOR = "\n\n"


def bundled_task_names() -> list[str]:
    """The accepted spellings of the bundled tasks, e.g. ["bundled:sentiment", ...]."""
    return [BUNDLED_PREFIX + name for name in BUNDLED_TASKS]


def bundled_path(task: str, split: str) -> Path:
    """Path of a bundled task's split. task is "sentiment" or "bundled:sentiment" (either works)."""
    name = task[len(BUNDLED_PREFIX):] if task.startswith(BUNDLED_PREFIX) else task
    if name not in BUNDLED_TASKS:
        raise ValueError(f"unknown bundled task {task!r}; available: {', '.join(bundled_task_names())}")
    if split not in BUNDLED_TASKS[name]:
        raise ValueError(f"bundled task {task!r} has no split {split!r}; splits: "
                         f"{', '.join(BUNDLED_TASKS[name])}")
    return BUNDLED_DIR / BUNDLED_TASKS[name][split]


def corpus_path() -> Path:
    """The generic text corpus that the tiny-llama tokenizer and pretraining read."""
    return BUNDLED_DIR / CORPUS_FILE
