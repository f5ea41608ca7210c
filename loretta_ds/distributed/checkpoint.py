"""Small, atomic training checkpoints: only what resuming needs, never the frozen base weights.

Layout of ``OUTPUT_DIR/checkpoints/step-N/``:

    trainable.safetensors   every trainable tensor (fp32 master values), named as in
                            model.named_parameters(); rank 0 writes it
    optimizer.safetensors   per trainable tensor its optimizer moments (Adam: exp_avg, exp_avg_sq),
                            named "<moment>/<parameter name>"
    optimizer.json          the optimizer step count and hyperparameters, the LR scheduler state
    trainer_state.json      step, data position, bad-step counters, world size, ...
    rng/rank-R.safetensors  RNG states of rank R (python, numpy, torch, cuda; see rng_state.py)
    COMPLETE                written last: {step, files: {name: [bytes, sha256]}}

Every file is data that cannot run code when read: tensors in safetensors, the rest in JSON.
A checkpoint is often read from a shared directory that others can write to, and a pickle
(``torch.load(weights_only=False)``) runs whatever its author put in it. Checkpoints of the
first format (``optimizer.pt``, ``rng/rank-R.pt``: pickles) are refused, never opened.

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
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..file_io import fsync_dir
from ..run.directory import RunDir
from . import process_group
from . import rng_state as rng
from .engine import fp32_master_partitions
from .errors import CheckpointError
from .zero3_params import gathered, is_zero3_param

MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-step-"
TRAINABLE = "trainable.safetensors"
OPTIMIZER_MOMENTS = "optimizer.safetensors"
OPTIMIZER_STATE = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
RNG_DIR = "rng"
RNG_SUFFIX = ".safetensors"
# Format 1 kept the optimizer and RNG state in these pickles; they are recognized, never read.
PICKLED_FILES = ("optimizer.pt", "rng/rank-*.pt")
FORMAT_VERSION = 2


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    problem: str | None = None  # None: complete and intact

    @property
    def complete(self) -> bool:
        return self.problem is None


def checkpoints_dir(run_dir: RunDir | str | Path) -> Path:
    return RunDir(run_dir).checkpoints


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


_OWN_FILES = {TRAINABLE, OPTIMIZER_MOMENTS, OPTIMIZER_STATE, TRAINER_STATE, MARKER, "optimizer.pt"}


def foreign_files(path: Path) -> list[str]:
    """Files in checkpoint directory ``path`` that no save of this trainer writes (a user's files).

    A directory with any is never deleted, whatever its name: cleaning up torn saves and
    rotating old checkpoints touch only directories that hold this trainer's files alone.
    """
    foreign = []
    for entry in sorted(path.rglob("*")):
        name = str(entry.relative_to(path))
        if entry.is_symlink() or (entry.is_dir() and name != RNG_DIR):
            foreign.append(name + ("/" if entry.is_dir() else ""))
        elif entry.is_file() and name not in _OWN_FILES and not (
                entry.parent.name == RNG_DIR and entry.parent.parent == path and entry.name.startswith("rank-")
                and entry.name.endswith((RNG_SUFFIX, ".pt"))):
            foreign.append(name)
    return foreign


def remove_own_checkpoint(path: Path) -> None:
    """Delete checkpoint directory ``path``, which must hold this trainer's files only."""
    foreign = foreign_files(path)
    if foreign:
        raise CheckpointError(f"not removing {path}: it holds files this trainer does not write "
                              f"({', '.join(foreign[:5])}); move them out of {path.parent}")
    shutil.rmtree(path)


def list_checkpoints(run_dir: RunDir | str | Path) -> tuple[list[CheckpointInfo], list[CheckpointInfo]]:
    """(complete checkpoints oldest first, torn ones: interrupted saves and damaged directories)."""
    root = checkpoints_dir(run_dir)
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


def latest_checkpoint(run_dir: RunDir | str | Path, log: Callable[[str], None] = print) -> CheckpointInfo | None:
    """The newest complete checkpoint; torn ones are reported through ``log`` and skipped."""
    complete, torn = list_checkpoints(run_dir)
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
    for param in fp32_master_partitions(engine):
        state = optimizer.state[param]
        if not state:
            state["step"] = torch.tensor(0.0) if torch_style else 0
        for key in keys:
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
    # ZeRO-1/2 (and DeepSpeed's bf16 optimizer) point each parameter's view of the optimizer state
    # at that state only after the first step; safe_set_full_optimizer_state writes through those
    # views, so link them to the entries just made (the first step then keeps this link).
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


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
        "param_groups": [_json_values(group, skip=("params",)) for group in _basic_optimizer(engine).param_groups],
        "scheduler": _json_values(engine.lr_scheduler.state_dict()) if engine.lr_scheduler is not None else None,
    }
    return values, optimizer


def _json_values(mapping: dict, skip: tuple[str, ...] = ()) -> dict:
    """``mapping`` with JSON values only: 0-d tensors become numbers, tuples lists.

    The optimizer's hyperparameters and the scheduler's counters are numbers; a value that is
    not (a function a scheduler keeps, say) is left out rather than pickled, and the restore
    keeps the fresh engine's value for it.
    """
    out = {}
    for key, value in mapping.items():
        if key in skip:
            continue
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def _moments_bytes(moments: dict[str, dict[str, torch.Tensor]]) -> bytes:
    flat = {f"{key}/{name}": tensor for name, by_key in moments.items() for key, tensor in by_key.items()}
    return safetensors_bytes(flat, metadata={"format": "pt"})


def read_optimizer(path: Path) -> dict:
    """A checkpoint's optimizer state (the inverse of the save); only safetensors and JSON are read."""
    state = json.loads((path / OPTIMIZER_STATE).read_text())
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for flat_name, tensor in load_file(str(path / OPTIMIZER_MOMENTS)).items():
        key, name = flat_name.split("/", 1)
        moments.setdefault(name, {})[key] = tensor
    return {**state, "moments": moments}


def restore_optimizer(path: Path, engine, model: torch.nn.Module) -> None:
    """Put a checkpoint's fp32 masters, moments, step count and scheduler into a fresh engine.

    Each rank copies its own slice of every full tensor (no collective), so the checkpoint may
    come from a run with a different number of processes.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    values = load_file(str(path / TRAINABLE))
    saved = read_optimizer(path)
    params = dict(model.named_parameters())
    saved_keys = sorted({key for moments in saved["moments"].values() for key in moments})
    _ensure_optimizer_state(engine, saved_keys)
    keys = set(_optimizer_state_keys(engine))
    for name, value in values.items():
        param = params[name]
        target = process_group.device()
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
        # The schedule is this run's (a continued run may be longer, or with the opt-in use another
        # lr): the next update takes this run's value at the restored position, not the value the
        # checkpoint's run had set. For an unchanged run the two are the same number.
        for group, lr in zip(_basic_optimizer(engine).param_groups, engine.lr_scheduler.get_lr()):
            group["lr"] = lr


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
    zero3 = any(is_zero3_param(p) for p in targets)
    with gathered([p for p in targets if is_zero3_param(p)], zero3, modifier_rank=0):
        with torch.no_grad():
            for name in names:
                params[name].copy_(values[name].to(params[name].dtype))


def load_trainer_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


# --- RNG ------------------------------------------------------------------------------------


def rng_file(path: Path, rank: int) -> Path:
    return path / RNG_DIR / f"rank-{rank}{RNG_SUFFIX}"


def restore_rng(path: Path, rank: int) -> bool:
    """Restore this rank's RNG states; False if the checkpoint has none for this rank."""
    file = rng_file(path, rank)
    if not file.is_file():
        return False
    rng.restore(file)
    return True


# --- what a checkpoint may hold, checked before anything loads ---------------------------------


def pickled_files(path: Path) -> list[str]:
    """The format-1 pickle files in checkpoint ``path`` (relative names), which are never read."""
    return sorted(str(p.relative_to(path)) for pattern in PICKLED_FILES for p in path.glob(pattern))


def refuse_pickles(path: Path) -> None:
    """Raise ValueError if checkpoint ``path`` holds pickles (format 1, or planted), unread."""
    pickles = pickled_files(path)
    if pickles:
        raise ValueError(
            f"checkpoint {path} stores its optimizer/RNG state as Python pickles ({', '.join(pickles)}): the "
            "format of older loretta_ds versions, or a planted file. A pickle can run code when it is read, so "
            "it is not loaded. Start the run again from step 0 (--resume none with another --output_dir, or "
            "--overwrite_output_dir in this one); the adapter of a finished run can still be exported")


def check_loadable(path: Path) -> None:
    """Raise ValueError unless every file of checkpoint ``path`` is in this trainer's format.

    Reads the safetensors headers and the JSON files only, so a pickled (format 1 or planted)
    or malformed checkpoint is refused before any model loads, and no file is ever unpickled.
    """
    refuse_pickles(path)
    for name in (TRAINABLE, OPTIMIZER_MOMENTS):
        try:
            with safe_open(str(path / name), framework="pt") as handle:
                list(handle.keys())
        except (SafetensorError, OSError) as err:
            raise ValueError(f"checkpoint {path}: {name} is missing or not a safetensors file ({err}); "
                             "resume from another checkpoint, or start over with --overwrite_output_dir") from None
    for name in (OPTIMIZER_STATE, TRAINER_STATE):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            data = err
        if not isinstance(data, dict):
            raise ValueError(f"checkpoint {path}: {name} is missing or not a JSON object; resume from another "
                             "checkpoint, or start over with --overwrite_output_dir")
    for file in sorted((path / RNG_DIR).glob(f"rank-*{RNG_SUFFIX}")):
        rng.check(file)


# --- saving ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Write and fsync. Files are serialized in memory first (they are small), so a full disk
    surfaces here as the OSError that names it, not as a library's generic write failure."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_marker(directory: Path, step: int) -> None:
    """Seal a fully written checkpoint directory: COMPLETE lists every file with its size and
    sha256, so a later reader detects a file that is missing, cut or altered."""
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    marker = {"step": step, "files": {f: [(directory / f).stat().st_size, _sha256(directory / f)] for f in files}}
    _write(directory / MARKER, (json.dumps(marker, indent=1) + "\n").encode())
    for sub in {(directory / f).parent for f in files} | {directory}:
        fsync_dir(sub)


def save_checkpoint(run_dir: RunDir | str | Path, step: int, engine, model: torch.nn.Module, names: list[str],
                    trainer_state: dict, keep_last: int, rank: int,
                    log: Callable[[str], None] = print) -> Path:
    """Write ``checkpoints/step-<step>`` atomically (a collective: every rank calls it).

    Raises CheckpointError on every rank when any rank fails to write (a full disk, say); the
    partial directory is removed and the previous checkpoints stay as they were.
    """
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step}"
    tmp = root / f"{TMP_PREFIX}{step}"
    if process_group.any_rank(final.is_dir() and check_checkpoint(final) is None):
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
        if process_group.any_rank(failed is not None):
            if rank == 0 and tmp.is_dir() and not foreign_files(tmp):
                shutil.rmtree(tmp, ignore_errors=True)  # give the space back
            previous = latest_checkpoint(run_dir, log=lambda message: None)
            cause = f"{type(failed).__name__}: {failed}" if failed is not None else "failed on another rank"
            raise CheckpointError(
                f"writing checkpoint {final} failed ({cause}). The newest complete checkpoint is "
                f"{previous.path if previous else 'none'}, intact; fix the cause (e.g. free disk space) and "
                "relaunch with --resume auto to continue from it.")

    def create() -> None:
        if rank == 0:
            if tmp.exists():
                remove_own_checkpoint(tmp)  # left by an interrupted save of the same step
            (tmp / RNG_DIR).mkdir(parents=True)

    def write_files() -> None:
        if rank == 0:
            _write(tmp / TRAINABLE, safetensors_bytes(values, metadata={"format": "pt"}))
            _write(tmp / OPTIMIZER_MOMENTS, _moments_bytes(optimizer["moments"]))
            counters = {k: v for k, v in optimizer.items() if k != "moments"}
            _write(tmp / OPTIMIZER_STATE, (json.dumps(counters, indent=1) + "\n").encode())
            state = dict(trainer_state, step=step, format_version=FORMAT_VERSION)
            _write(tmp / TRAINER_STATE, (json.dumps(state, indent=2) + "\n").encode())
        _write(rng_file(tmp, rank), rng.capture())

    def publish() -> None:
        if rank == 0:
            write_marker(tmp, step)
            if final.exists():
                remove_own_checkpoint(final)  # a damaged directory of the same step (reported as torn)
            os.rename(tmp, final)
            fsync_dir(root)
            rotate(run_dir, keep_last, log)

    stage(create)
    stage(write_files)
    stage(publish)
    return final


def rotate(run_dir: RunDir | str | Path, keep_last: int, log: Callable[[str], None] = print) -> None:
    """Keep the ``keep_last`` newest complete checkpoints; remove older ones and leftovers of
    interrupted saves older than the newest complete checkpoint (never a directory holding
    files this trainer does not write)."""
    complete, torn = list_checkpoints(run_dir)
    if not complete:
        return
    newest = complete[-1].step
    for info in complete[:-keep_last]:
        if not foreign_files(info.path):
            shutil.rmtree(info.path, ignore_errors=True)
    for info in torn:
        if info.step < newest and not foreign_files(info.path):
            log(f"removing torn checkpoint {info.path} ({info.problem})")
            shutil.rmtree(info.path, ignore_errors=True)
