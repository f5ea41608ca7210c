"""--report_to: the run's metrics also sent to Weights & Biases or MLflow, as HF Trainer users expect.

Neither package is a dependency (pip install wandb, or mlflow; or the extras of the same names).
Both log offline by default, into the run directory: W&B in offline mode (OUTPUT_DIR/wandb, sync
later with `wandb sync`; WANDB_MODE=online logs live), MLflow into a file store
(OUTPUT_DIR/mlruns, `mlflow ui --backend-store-uri OUTPUT_DIR/mlruns`; MLFLOW_TRACKING_URI points
it elsewhere). Only rank 0 reports.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
from pathlib import Path

# --report_to value -> (the module it imports, the pip package that provides it)
PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def check_reporter(name: str) -> None:
    """Refuse, before anything runs, a --report_to whose package is not installed."""
    if name == "none":
        return
    if name not in PACKAGES:
        raise ValueError(f"unknown report_to {name!r}: use one of none, {', '.join(PACKAGES)}")
    module, package = PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"--report_to {name} needs the {package} package, which is not installed here (loretta_ds "
                         f"does not depend on it): pip install {package} (or pip install \"loretta-ds[{name}]\"), "
                         "or pass --report_to none (metrics.jsonl and TensorBoard still log every step)")


def _scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as the trackers' scalar names: train/loss, eval/accuracy ..."""
    prefix = "eval" if record.get("kind") == "eval" else "train"
    return {f"{prefix}/{key}": float(value) for key, value in record.items()
            if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


class WandbReporter:
    def __init__(self, run_dir: Path, settings: dict):
        wandb = importlib.import_module("wandb")
        self._wandb = wandb
        # The id is the run directory's: a resumed run continues the same W&B run.
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "loretta_ds"), name=run_dir.name,
                               id=_run_id(run_dir), resume="allow", dir=str(run_dir), config=settings,
                               mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, record: dict) -> None:
        scalars = _scalars(record)
        if scalars and "step" in record:
            self._run.log(scalars, step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()


class MlflowReporter:
    def __init__(self, run_dir: Path, settings: dict):
        mlflow = importlib.import_module("mlflow")
        self._mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "loretta_ds"))
        self._run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({key: str(value)[:250] for key, value in settings.items()})

    def log(self, record: dict) -> None:
        scalars = _scalars(record)
        if scalars and "step" in record:
            self._mlflow.log_metrics({key.replace("/", "_"): value for key, value in scalars.items()},
                                     step=int(record["step"]))

    def close(self) -> None:
        self._mlflow.end_run()


def _run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def open_reporter(name: str, run_dir: Path, settings: dict):
    """The reporter of --report_to ``name`` for rank 0 (None for none)."""
    if name == "none":
        return None
    check_reporter(name)
    return {"wandb": WandbReporter, "mlflow": MlflowReporter}[name](Path(run_dir), settings)
