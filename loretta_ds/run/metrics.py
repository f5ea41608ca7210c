"""What a run reports: metrics.jsonl, TensorBoard (when installed), the progress bar, the loss plot.

Only rank 0 creates any of these; the other ranks get inert objects, so the training loop calls
the same methods everywhere without asking who it is.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from ..distributed.errors import RunFailure
from .directory import RunDir


def memory_stats() -> dict:
    """Host RSS of this process, and the CUDA allocator's peak when a GPU is in use (MiB)."""
    stats = {}
    try:
        import psutil

        stats["rss_mb"] = round(psutil.Process(os.getpid()).memory_info().rss / 2 ** 20, 1)
    except ImportError:
        import resource

        stats["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if torch.cuda.is_available():
        stats["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return stats


class MetricsLog:
    """Appends one JSON record per line to OUTPUT_DIR/metrics.jsonl (and TensorBoard).

    On resume the records after the checkpoint's step are dropped first: the interrupted run may
    have logged steps that the resumed run repeats, and each step must appear once.
    """

    def __init__(self, run_dir: RunDir | Path, enabled: bool, resume_step: int = 0, report_to: str = "none",
                 settings: dict | None = None):
        run_dir = RunDir(run_dir)
        self.enabled = enabled
        self.path = run_dir.metrics
        self._tb = None
        self._reporter = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with self._writing():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir.tensorboard), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is optional
            self._tb = None
        from .reporting import open_reporter

        self._reporter = open_reporter(report_to, run_dir.root, settings or {})

    @contextlib.contextmanager
    def _writing(self):
        """A full disk (or a file system turned read-only) while the log is written ends the run
        with one message that says what to do, not a traceback from inside the training loop."""
        try:
            yield
        except OSError as err:
            reason = err.strerror or str(err)
            raise RunFailure(f"cannot write the metrics log {self.path}: {reason}. Free space on that file system "
                             "(or make it writable), then run the same command again: the run continues from its "
                             "newest checkpoint (--resume auto)") from err

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self._writing(), self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            prefix = "eval" if record.get("kind") == "eval" else "train"
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])
        if self._reporter is not None:
            self._reporter.log(record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._reporter is not None:
            self._reporter.close()
            self._reporter = None


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return records


class Progress:
    """tqdm bar on rank 0 with loss, lr, tokens/s; tqdm itself shows the ETA."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                             mininterval=1.0)

    def update(self, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self._bar.update(1)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class StepTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def plot_losses(run_dir: RunDir | Path) -> Path | None:
    """OUTPUT_DIR/loss.png: train and eval loss over steps, eval accuracy on a second axis."""
    run_dir = RunDir(run_dir)
    records = read_metrics(run_dir.metrics)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.0)
    eval_loss = [(r["step"], r["loss"]) for r in evals if _finite(r.get("loss"))]
    if eval_loss:
        ax.plot(*zip(*eval_loss), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    accuracy = [(r["step"], r["accuracy"]) for r in evals if _finite(r.get("accuracy"))]
    if accuracy:
        ax2 = ax.twinx()
        ax2.plot(*zip(*accuracy), "s--", color="tab:green", label="eval accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.05)
        more_handles, more_labels = ax2.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right")
    ax.set_title("training run")
    fig.tight_layout()
    path = run_dir.plot
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
