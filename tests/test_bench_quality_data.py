"""The quality benchmark's tasks (benchmarks/quality_data.py): the same files for a seed, held-out
items that no training item gives away, answers that follow the stated rule."""
import datetime as dt
import json
import re

from benchmarks import quality_data


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tasks_are_deterministic_and_held_out_items_are_new(tmp_path):
    first = quality_data.write_tasks(tmp_path / "a", n_train=300, n_eval=60, seed=7)
    again = quality_data.write_tasks(tmp_path / "b", n_train=300, n_eval=60, seed=7)
    other = quality_data.write_tasks(tmp_path / "c", n_train=300, n_eval=60, seed=8)
    for task in quality_data.TASKS:
        for split in ("train.jsonl", "validation.jsonl"):
            assert (first[task] / split).read_bytes() == (again[task] / split).read_bytes()
        assert (first[task] / "train.jsonl").read_bytes() != (other[task] / "train.jsonl").read_bytes()
    reviews_train = {r["text"] for r in read(first["reviews"] / "train.jsonl")}
    assert not reviews_train & {r["text"] for r in read(first["reviews"] / "validation.jsonl")}

    def start(prompt):  # the date an item starts from, as written
        return re.search(r"Date: (?:\d days? after )?(.*)\n", prompt).group(1)

    def origin(record):  # that date, from the answer less the days asked for
        days = re.search(r"Date: (\d) days? after ", record["prompt"])
        return dt.date.fromisoformat(record["completion"].strip()) - dt.timedelta(days=int(days.group(1)) if days else 0)

    train, held_out = read(first["dates"] / "train.jsonl"), read(first["dates"] / "validation.jsonl")
    assert not {origin(r) for r in train} & {origin(r) for r in held_out}
    for record in train + held_out:  # the answer is the written date (plus the days asked for) in ISO form
        assert any(form(origin(record)) == start(record["prompt"]) for form in quality_data.DATE_FORMATS), record
