"""Small, atomic training checkpoints: only what resuming needs, never the frozen base weights.

Layout of ``OUTPUT_DIR/checkpoints/step-N/``:

    trainable.safetensors   every trainable tensor (fp32 master values), named as in
                            model.named_parameters(); rank 0 writes it
    optimizer.pt            per trainable tensor its optimizer moments (Adam: exp_avg, exp_avg_sq),
                            the optimizer step count and hyperparameters, the LR scheduler state
    trainer_state.json      step, data position, bad-step counters, world size, ...
    rng/rank-R.pt           RNG states of rank R (python, numpy, torch, cuda)
    COMPLETE                written last: {step, files: {name: [bytes, sha256]}}

Optimizer state is *gathered*, not written per rank: under ZeRO the fp32 masters and Adam
moments are flat partitions spread over the ranks; ``safe_get_full_*`` assembles each trainable
tensor's state (a collective), and rank 0 writes full per-tensor state. It is small (three times
the trainable parameters) and does not depend on the process count, so a run can resume on a
different number of processes; restoring hands each rank its slice with ``safe_set_full_*``.

Writes go to ``checkpoints/.tmp-step-N``; every file is fsynced, then COMPLETE is written and the
directory renamed to ``step-N`` (an atomic rename). A crash at any point leaves either the old
checkpoints or a directory that ``list_checkpoints`` reports as torn and resuming skips.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..export.staging import fsync_dir
from . import engine as dist_engine
from .errors import CheckpointError

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-step-"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
RNG_DIR = "rng"
FORMAT_VERSION = 1
SAVE_DELAY_ENV = "LORETTA_DS_TEST_SAVE_DELAY"  # a test hook, see _test_save_delay


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    problem: str | None = None  # None: complete and intact

    @property
    def complete(self) -> bool:
        return self.problem is None


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint whose files match its marker, else the problem."""
    marker = path / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the save was interrupted)"
    try:
        recorded = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "unreadable COMPLETE marker"
    for name, (size, digest) in recorded.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, expected {size}"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum"
    return None


def list_checkpoints(output_dir: str | Path) -> tuple[list[CheckpointInfo], list[CheckpointInfo]]:
    """(complete checkpoints oldest first, torn ones: interrupted saves and damaged directories)."""
    root = checkpoints_dir(output_dir)
    complete, torn = [], []
    if not root.is_dir():
        return complete, torn
    for entry in root.iterdir():
        if not entry.is_dir():
            continue
        name = entry.name
        if name.startswith(TMP_PREFIX):
            step_text = name[len(TMP_PREFIX):]
            torn.append(CheckpointInfo(entry, int(step_text) if step_text.isdigit() else -1,
                                       "interrupted save (temporary directory)"))
            continue
        if not name.startswith("step-") or not name[5:].isdigit():
            continue
        info = CheckpointInfo(entry, int(name[5:]))
        info.problem = check_checkpoint(entry)
        (complete if info.complete else torn).append(info)
    complete.sort(key=lambda c: c.step)
    torn.sort(key=lambda c: c.step)
    return complete, torn


def latest_checkpoint(output_dir: str | Path, log: Callable[[str], None] = print) -> CheckpointInfo | None:
    """The newest complete checkpoint; torn ones are reported through ``log`` and skipped."""
    complete, torn = list_checkpoints(output_dir)
    for info in torn:
        log(f"ignoring torn checkpoint {info.path}: {info.problem}")
    return complete[-1] if complete else None


# --- gathering and restoring optimizer state -----------------------------------------------


def _basic_optimizer(engine):
    """The torch-level optimizer under DeepSpeed's ZeRO wrapper (holds the flat fp32 states)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _optimizer_state_keys(engine) -> list[str]:
    for state in _basic_optimizer(engine).state.values():
        return sorted(k for k, v in state.items() if k != "step" and torch.is_tensor(v) and v.dim() > 0)
    return []


def _optimizer_step_count(engine) -> int:
    for state in _basic_optimizer(engine).state.values():
        step = state.get("step", 0)
        return int(step.item() if torch.is_tensor(step) else step)
    return 0


def _set_optimizer_step_count(engine, count: int) -> None:
    for state in _basic_optimizer(engine).state.values():
        if "step" in state:
            step = state["step"]
            state["step"] = torch.full_like(step, count) if torch.is_tensor(step) else count


def _replay_cpu_adam_bias_correction(engine, count: int) -> None:
    """Bring DeepSpeed's CPU Adam to the bias-correction state of an uninterrupted run.

    The C++ optimizer keeps beta1^t and beta2^t itself: multiplied by beta once per step in a
    run that never stopped, but recomputed with pow(beta, t) when the step it is handed jumps, as
    after a resume. The two differ in the last bits of a float, which Adam carries into every
    later update (measured: 1e-6 in the adapter 25 steps after a resume at step 5). Handing it
    steps 1..count on empty tensors rebuilds the product exactly as the run that never stopped
    did; no value is touched (an empty update reads and writes nothing).
    """
    optimizer = _basic_optimizer(engine)
    if not hasattr(optimizer, "ds_opt_adam") or count <= 0:
        return  # not the CPU Adam: torch optimizers recompute the correction from the step each time
    empty = torch.zeros(0, dtype=torch.float32)
    # One C++ optimizer per DeepSpeedCPUAdam, shared by its groups: in a step, the first group's
    # call advances the product and the others leave it (same step), so replay the first group's.
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    for step in range(1, count + 1):
        optimizer.ds_opt_adam.adam_update(optimizer.opt_id, step, group["lr"], beta1, beta2, group["eps"],
                                          group["weight_decay"], group["bias_correction"], empty, empty, empty, empty)


def _ensure_optimizer_state(engine, keys: list[str]) -> None:
    """Create the optimizer's per-tensor state (zeros) where it does not exist yet.

    Adam-type optimizers create their state lazily at the first step, but restoring writes into
    it (each rank its slice), so a fresh engine needs the entries first. They are made as the
    optimizer itself would: zero moments like its (flat fp32) parameters, a step counter as an
    int (DeepSpeed's CPU Adam) or a float tensor (torch optimizers).
    """
    optimizer = _basic_optimizer(engine)
    torch_style = type(optimizer).__module__.startswith("torch.optim")
    for param in dist_engine.fp32_master_partitions(engine):
        state = optimizer.state[param]
        if not state:
            state["step"] = torch.tensor(0.0) if torch_style else 0
        for key in keys:
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)


def gather_training_state(engine, model: torch.nn.Module, names: list[str]) -> tuple[dict, dict]:
    """Full fp32 values and optimizer moments of the trainable tensors ``names``.

    A collective under ZeRO (every rank must call it, in the same order); returns the same
    CPU tensors on every rank.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    params = dict(model.named_parameters())
    keys = _optimizer_state_keys(engine)
    values, moments = {}, {}
    for name in names:
        param = params[name]
        full = safe_get_full_fp32_param(param)
        if full is None:  # not a ZeRO-managed parameter: the parameter is its own master
            full = param.detach()
        shape = tuple(getattr(param, "ds_shape", param.shape))
        values[name] = full.detach().float().reshape(shape).cpu().contiguous()
        moments[name] = {}
        for key in keys:
            state = safe_get_full_optimizer_state(param, key)
            if state is not None:
                moments[name][key] = state.detach().float().reshape(shape).cpu().contiguous()
    optimizer = {
        "moments": moments,
        "step_count": _optimizer_step_count(engine),
        "param_groups": [{k: v for k, v in group.items() if k != "params"}
                         for group in _basic_optimizer(engine).param_groups],
        "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
    }
    return values, optimizer


def restore_optimizer(path: Path, engine, model: torch.nn.Module) -> None:
    """Put a checkpoint's fp32 masters, moments, step count and scheduler into a fresh engine.

    Each rank copies its own slice of every full tensor (no collective), so the checkpoint may
    come from a run with a different number of processes.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    values = load_file(str(path / TRAINABLE))
    saved = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    saved_keys = sorted({key for moments in saved["moments"].values() for key in moments})
    _ensure_optimizer_state(engine, saved_keys)
    keys = set(_optimizer_state_keys(engine))
    for name, value in values.items():
        param = params[name]
        target = dist_engine.device()
        safe_set_full_fp32_param(param, value.to(target))
        for key, moment in saved["moments"].get(name, {}).items():
            if key not in keys:
                raise ValueError(f"checkpoint {path} has optimizer state {key!r}, which this run's optimizer "
                                 f"does not keep ({sorted(keys)}); resume with the same optimizer type")
            safe_set_full_optimizer_state(param, moment.to(target), key)
    _set_optimizer_step_count(engine, saved["step_count"])
    _replay_cpu_adam_bias_correction(engine, saved["step_count"])
    for group, saved_group in zip(_basic_optimizer(engine).param_groups, saved["param_groups"]):
        group["lr"] = saved_group.get("lr", group["lr"])
    if saved.get("scheduler") is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(saved["scheduler"])


def check_fits(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """The checkpoint holds exactly the trainable tensors ``shapes`` (name -> shape) of this run.

    Reads only the safetensors header, so a mismatch is reported before any model loads.
    """
    from safetensors import safe_open

    with safe_open(str(path / TRAINABLE), framework="pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    missing, unexpected = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
    wrong = sorted(n for n in set(shapes) & set(saved) if tuple(shapes[n]) != saved[n])
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {path} does not fit this run's trainable parameters (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); it was written by "
                         "a run with another model or adapter config: resume it with that config, or start "
                         "this run in another --output_dir")


def load_trainable_into_model(path: Path, model: torch.nn.Module, names: list[str]) -> None:
    """Copy a checkpoint's trainable tensors into the (not yet DeepSpeed-initialized) model.

    Done before ``deepspeed.initialize`` so the optimizer's fp32 masters start from these values;
    names and shapes must match this run's trainable set exactly.
    """
    values = load_file(str(path / TRAINABLE))
    params = dict(model.named_parameters())
    missing, unexpected = sorted(set(names) - set(values)), sorted(set(values) - set(names))
    wrong = [n for n in set(names) & set(values)
             if tuple(values[n].shape) != tuple(getattr(params[n], "ds_shape", params[n].shape))]
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {path} does not fit this run's trainable parameters (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); it was "
                         "written by a run with another model or adapter config")
    # Norm weights came from from_pretrained and may already be ZeRO-3 partitions (the injected
    # cores are not yet): gather them, write on rank 0, and let DeepSpeed re-partition.
    targets = [params[n] for n in names]
    zero3 = any(dist_engine.is_zero3_param(p) for p in targets)
    with dist_engine.gathered([p for p in targets if dist_engine.is_zero3_param(p)], zero3, modifier_rank=0):
        with torch.no_grad():
            for name in names:
                params[name].copy_(values[name].to(params[name].dtype))


def load_trainer_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


# --- RNG ------------------------------------------------------------------------------------


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(path: Path, rank: int) -> bool:
    """Restore this rank's RNG states; False if the checkpoint has none for this rank."""
    file = path / RNG_DIR / f"rank-{rank}.pt"
    if not file.is_file():
        return False
    state = torch.load(file, map_location="cpu", weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return True


# --- saving ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Write and fsync. Files are serialized in memory first (they are small), so a full disk
    surfaces here as the OSError that names it, not as a library's generic write failure."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_marker(directory: Path, step: int) -> None:
    """Seal a fully written checkpoint directory: COMPLETE lists every file with its size and
    sha256, so a later reader detects a file that is missing, cut or altered."""
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    marker = {"step": step, "files": {f: [(directory / f).stat().st_size, _sha256(directory / f)] for f in files}}
    _write(directory / MARKER, (json.dumps(marker, indent=1) + "\n").encode())
    for sub in {(directory / f).parent for f in files} | {directory}:
        fsync_dir(sub)


def save_checkpoint(output_dir: str | Path, step: int, engine, model: torch.nn.Module, names: list[str],
                    trainer_state: dict, keep_last: int, rank: int,
                    log: Callable[[str], None] = print) -> Path:
    """Write ``checkpoints/step-<step>`` atomically (a collective: every rank calls it).

    Raises CheckpointError on every rank when any rank fails to write (a full disk, say); the
    partial directory is removed and the previous checkpoints stay as they were.
    """
    root = checkpoints_dir(output_dir)
    final = root / f"step-{step}"
    tmp = root / f"{TMP_PREFIX}{step}"
    if dist_engine.any_rank(final.is_dir() and check_checkpoint(final) is None):
        return final  # this step is already saved (e.g. the end of a run that saved at this step)
    values, optimizer = gather_training_state(engine, model, names)
    failed: BaseException | None = None

    def stage(action: Callable[[], None]) -> None:
        """Run one stage of the save on this rank; then all ranks learn whether any failed."""
        nonlocal failed
        if failed is None:
            try:
                action()
            except Exception as err:  # noqa: BLE001 - any failure aborts the save, reported below
                failed = err
        if dist_engine.any_rank(failed is not None):
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # give the space back
            previous = latest_checkpoint(output_dir, log=lambda message: None)
            cause = f"{type(failed).__name__}: {failed}" if failed is not None else "failed on another rank"
            raise CheckpointError(
                f"writing checkpoint {final} failed ({cause}). The newest complete checkpoint is "
                f"{previous.path if previous else 'none'}, intact; fix the cause (e.g. free disk space) and "
                "relaunch with --resume auto to continue from it.")

    def create() -> None:
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)  # left by an interrupted save of the same step
            (tmp / RNG_DIR).mkdir(parents=True)

    def write_files() -> None:
        if rank == 0:
            _write(tmp / TRAINABLE, safetensors_bytes(values, metadata={"format": "pt"}))
            _write(tmp / OPTIMIZER, _torch_bytes(optimizer))
            state = dict(trainer_state, step=step, format_version=FORMAT_VERSION)
            _write(tmp / TRAINER_STATE, (json.dumps(state, indent=2) + "\n").encode())
        _write(tmp / RNG_DIR / f"rank-{rank}.pt", _torch_bytes(rng_state()))

    def publish() -> None:
        if rank == 0:
            write_marker(tmp, step)
            if final.exists():
                shutil.rmtree(final)  # a damaged directory of the same step (reported as torn)
            os.rename(tmp, final)
            fsync_dir(root)
            rotate(output_dir, keep_last, log)

    stage(create)
    stage(write_files)
    _test_save_delay()
    stage(publish)
    return final


def _test_save_delay() -> None:
    """Test hook, read here only: with LORETTA_DS_TEST_SAVE_DELAY=SECONDS every save waits that long
    between its data files and its COMPLETE marker, so that a test can kill a run in the middle of
    a save (tests/test_reliability_faults.py). Unset in real runs."""
    delay = os.environ.get(SAVE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def rotate(output_dir: str | Path, keep_last: int, log: Callable[[str], None] = print) -> None:
    """Keep the ``keep_last`` newest complete checkpoints; remove older ones and leftovers of
    interrupted saves older than the newest complete checkpoint."""
    complete, torn = list_checkpoints(output_dir)
    if not complete:
        return
    newest = complete[-1].step
    for info in complete[:-keep_last]:
        shutil.rmtree(info.path, ignore_errors=True)
    for info in torn:
        if info.step < newest:
            log(f"removing torn checkpoint {info.path} ({info.problem})")
            shutil.rmtree(info.path, ignore_errors=True)
