"""The two tasks of the quality benchmark, generated from word lists and rules written here.

Both have answers a program can check, and both are built so that the answer of a held-out item
follows from a rule seen in training, not from memorizing the item:

* ``reviews`` (classification, scored by label-word likelihood): three-sentence reviews whose
  sentences carry negations ("The soup was far from bland. The staff was not friendly. The view
  was lovely." -> positive); the label is the majority of the three sentences' polarities, each
  flipped by its negation. No held-out review occurs in training.
* ``dates`` (generation, scored by exact match of the greedy answer): a date written in one of
  five human formats -> ISO 8601 (``7th of March, 2021`` -> ``2021-03-07``); half of the items add
  1-9 days (``3 days after March 30, 2021`` -> ``2021-04-02``). Held-out items start from dates
  that no training item starts from.

Everything comes from ``random.Random(seed)``, so the files are the same on every machine. Run as a
script to write them: ``python benchmarks/quality_data.py OUT_DIR`` -> OUT_DIR/{reviews,dates}/
{train,validation}.jsonl (the trainer reads a directory's validation file as its eval split).
"""
from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import random
from pathlib import Path

TASKS = ("reviews", "dates")
LABEL_WORDS = ("positive", "negative")

SUBJECTS = [
    "the soup", "the pasta", "the hotel room", "the concert", "the service", "the movie", "the staff",
    "the coffee", "the train ride", "the museum", "the playground", "the new phone", "the laptop",
    "the bakery", "the lecture", "the guide", "the beach", "the bed", "the sandwich", "the show",
    "the salad", "the game", "the app", "the printer", "the garden", "the tour", "the waiter",
    "the dessert", "the book", "the ending", "the sound", "the lighting", "the airport", "the bus",
    "the parking", "the check-in", "the breakfast", "the view", "the music", "the class",
]
POSITIVE = ["good", "great", "friendly", "delicious", "lovely", "excellent", "pleasant", "clean",
            "comfortable", "fun", "helpful", "fresh", "wonderful", "quiet", "fast", "charming",
            "tasty", "reliable", "cozy", "brilliant"]
NEGATIVE = ["bad", "awful", "rude", "bland", "dirty", "boring", "slow", "noisy", "terrible", "cold",
            "stale", "broken", "cramped", "dull", "greasy", "confusing", "sloppy", "unreliable",
            "overpriced", "disappointing"]
# A negation flips the polarity of the adjective it precedes.
NEGATIONS = ["not", "never", "far from", "anything but", "hardly"]
INTENSIFIERS = ["", "", "", "very ", "really ", "quite ", "truly "]

DATE_FORMATS = (
    lambda d: f"{calendar.month_name[d.month]} {d.day}, {d.year}",            # March 7, 2021
    lambda d: f"{d.day} {calendar.month_name[d.month]} {d.year}",             # 7 March 2021
    lambda d: f"{_ordinal(d.day)} of {calendar.month_name[d.month]}, {d.year}",  # 7th of March, 2021
    lambda d: f"{calendar.month_abbr[d.month]} {d.day} {d.year}",             # Mar 7 2021
    lambda d: f"{calendar.day_name[d.weekday()]}, {calendar.month_name[d.month]} {d.day}, {d.year}",
)
DATE_PROMPT = "Rewrite the date as YYYY-MM-DD.\nDate: {date}\nISO:"


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _clause(rng: random.Random, subject: str) -> tuple[str, bool]:
    """(clause text, whether it is positive)."""
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    if rng.random() < 0.5:
        negation = rng.choice(NEGATIONS)
        # "not very good" reads naturally, "far from very good" does not: no intensifier after a negation.
        return f"{subject} was {negation} {adjective}", not positive
    return f"{subject} was {rng.choice(INTENSIFIERS)}{adjective}", positive


def _review(rng: random.Random) -> tuple[str, str]:
    """(review text, label word): three clauses on three subjects; the label is the majority of
    their polarities, each clause's polarity flipped by its negation."""
    subjects = rng.sample(SUBJECTS, 3)
    clauses = [_clause(rng, subject) for subject in subjects]
    text = " ".join(c[0][0].upper() + c[0][1:] + "." for c in clauses)
    positive = sum(c[1] for c in clauses) >= 2
    return text, LABEL_WORDS[0] if positive else LABEL_WORDS[1]


REVIEW_TEMPLATE = "Review: {text}\nIs the review mostly positive or mostly negative?"


def reviews_task(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Classification records {"text", "label"}; no held-out review occurs in training."""
    rng = random.Random(seed)
    evaluation, seen = [], set()
    while len(evaluation) < n_eval:
        text, label = _review(rng)
        if text not in seen:
            seen.add(text)
            evaluation.append({"text": REVIEW_TEMPLATE.format(text=text), "label": label})
    train = []
    while len(train) < n_train:
        text, label = _review(rng)
        if text not in seen:
            train.append({"text": REVIEW_TEMPLATE.format(text=text), "label": label})
    _balance_check(train + evaluation)
    return train, evaluation


def _balance_check(records: list[dict]) -> None:
    positive = sum(r["label"] == LABEL_WORDS[0] for r in records) / len(records)
    if not 0.4 < positive < 0.6:
        raise AssertionError(f"label balance {positive:.2f} is off; the generator changed")


def date_task(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """prompt_completion records; completion " YYYY-MM-DD" (the space keeps the answer's first token
    the same as after "ISO:" in free text). Half the items only change the format; the other half
    ask for a date 1-9 days later, so the answer needs day arithmetic with month and year rollover
    (and leap years). Held-out items start from dates that no training item starts from."""
    rng = random.Random(seed)
    first, last = dt.date(1950, 1, 1).toordinal(), dt.date(2049, 12, 20).toordinal()
    days = rng.sample(range(first, last + 1), n_train + n_eval)
    records = []
    for ordinal in days:
        day = dt.date.fromordinal(ordinal)
        shown = rng.choice(DATE_FORMATS)(day)
        if rng.random() < 0.5:
            offset = rng.randint(1, 9)
            shown = f"{offset} day{'s' if offset > 1 else ''} after {shown}"
            day = day + dt.timedelta(days=offset)
        records.append({"prompt": DATE_PROMPT.format(date=shown), "completion": " " + day.isoformat()})
    return records[n_eval:], records[:n_eval]


def write_tasks(out_dir: str | Path, n_train: int = 2000, n_eval: int = 200, seed: int = 1234) -> dict[str, Path]:
    """Write both tasks under out_dir; returns {task: directory}."""
    out = Path(out_dir)
    made = {}
    for index, (task, build) in enumerate((("reviews", reviews_task), ("dates", date_task))):
        train, evaluation = build(n_train, n_eval, seed + index)
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train), ("validation", evaluation)):
            with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
        made[task] = folder
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    for task, folder in write_tasks(args.out_dir, args.n_train, args.n_eval, args.seed).items():
        print(f"{task}: {folder}")


if __name__ == "__main__":
    main()
