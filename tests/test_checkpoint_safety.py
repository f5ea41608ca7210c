"""Checkpoints are data: no file of one can make the trainer run code, a damaged set is refused
rather than silently replaced, and --overwrite_output_dir starts over without touching a user's files.

The runs are the real trainer in a subprocess (one process, ZeRO-3), on real checkpoints it wrote.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from safetensors.torch import load_file

from loretta_ds.distributed import checkpoint as ckpt
from loretta_ds.distributed import rng_state
from reliability_support import error_lines, run_to_end, single_command, train_records
from test_trainer_checkpoint import make_checkpoint

RUN = {"max_steps": 4, "save_every": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    from loretta_ds.tiny_llama import ensure_tiny_llama

    ensure_tiny_llama()
    out = tmp_path_factory.mktemp("trained") / "run"
    status, output = run_to_end(single_command(out, **RUN), out.parent / "train.log")
    assert status == 0, output[-4000:]
    return out


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error(status: int, output: str, *fragments: str) -> str:
    assert status == 2, output[-4000:]
    errors = error_lines(output)
    assert len(errors) == 1 and "Traceback" not in output, output[-4000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


class _CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears if anything unpickles it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def planted_payload(sentinel: Path) -> bytes:
    return pickle.dumps({"moments": {}, "step_count": 2, "hook": _CreatesFile(sentinel)})


def test_the_planted_payload_runs_code_when_unpickled(tmp_path):
    """The payload used below is live: unpickling it (as torch.load(weights_only=False) did) creates the file."""
    proof = tmp_path / "proof"
    pickle.loads(planted_payload(proof))
    assert proof.exists()


@pytest.mark.slow
def test_checkpoint_files_are_safetensors_and_json_only(trained):
    step = trained / "checkpoints" / "step-4"
    names = {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()}
    assert names == {"trainable.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json",
                     "rng/rank-0.safetensors", "COMPLETE"}
    for name in names:
        head = (step / name).read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05"), f"{name} is a zip or a pickle"
    for name in ("optimizer.json", "trainer_state.json", "COMPLETE"):
        json.loads((step / name).read_text())
    state = json.loads((step / "optimizer.json").read_text())
    assert state["step_count"] == 4 and state["scheduler"] is not None
    moments = ckpt.read_optimizer(step)["moments"]
    trainable = load_file(str(step / "trainable.safetensors"))
    assert set(moments) == set(trainable) and all(set(m) == {"exp_avg", "exp_avg_sq"} for m in moments.values())
    assert all(moments[name]["exp_avg"].shape == value.shape for name, value in trainable.items())


def test_rng_states_round_trip_exactly(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.randn()  # both generators now hold a cached Gaussian too
    file = tmp_path / "rank-0.safetensors"
    file.write_bytes(rng_state.capture())
    expected = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    rng_state.restore(file)
    assert (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected
    file.write_bytes(pickle.dumps(random.getstate()))
    with pytest.raises(ValueError, match="not an RNG state written by this trainer"):
        rng_state.restore(file)


def plant(source: Path, target: Path, sentinel: Path, names: str) -> Path:
    """A copy of a real checkpoint whose optimizer and RNG files are pickles that create ``sentinel``,
    sealed with a valid COMPLETE marker (whoever writes a checkpoint writes its marker).

    names="format 1": as older versions named them (optimizer.pt, rng/rank-0.pt);
    names="format 2": under the safetensors names.
    """
    shutil.copytree(source, target)
    payload = planted_payload(sentinel)
    if names == "format 1":
        for name in ("optimizer.safetensors", "optimizer.json", "rng/rank-0.safetensors", "COMPLETE"):
            (target / name).unlink()
        (target / "optimizer.pt").write_bytes(payload)
        (target / "rng" / "rank-0.pt").write_bytes(payload)
    else:
        (target / "COMPLETE").unlink()
        (target / "optimizer.safetensors").write_bytes(payload)
        (target / "rng" / "rank-0.safetensors").write_bytes(payload)
    ckpt.write_marker(target, int(json.loads((target / "trainer_state.json").read_text())["step"]))
    assert ckpt.check_checkpoint(target) is None
    return target


@pytest.mark.slow
@pytest.mark.parametrize("names", ["format 1", "format 2"])
def test_a_planted_checkpoint_runs_no_code_with_resume_path_or_auto(trained, tmp_path, names):
    sentinel = tmp_path / "SENTINEL"
    source = trained / "checkpoints" / "step-2"
    fragment = "pickles" if names == "format 1" else "not a safetensors file"

    planted = plant(source, tmp_path / "elsewhere" / "step-2", sentinel, names)
    out = tmp_path / "new-run"
    status, output = run_to_end(single_command(out, **RUN, resume=str(planted)), tmp_path / "path.log")
    one_error(status, output, str(planted), fragment)
    assert not sentinel.exists() and not out.exists()

    # Dropped into a shared output directory, where --resume auto picks the newest checkpoint.
    shared = tmp_path / "shared"
    plant(source, shared / "checkpoints" / "step-2", sentinel, names)
    before = digests(shared)
    status, output = run_to_end(single_command(shared, **RUN), tmp_path / "auto.log")
    one_error(status, output, str(shared / "checkpoints" / "step-2"), fragment)
    assert not sentinel.exists()
    assert digests(shared) == before


def flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))


@pytest.mark.slow
def test_all_damaged_checkpoints_are_refused_then_overwrite_output_dir_starts_over(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "adapter")  # an unfinished run: --resume auto would continue it
    shutil.rmtree(out / "merged", ignore_errors=True)
    for step in (2, 4):
        flip_last_byte(out / "checkpoints" / f"step-{step}" / "trainable.safetensors")
    (out / "notes.txt").write_text("a user's notes, next to the run")
    (out / "checkpoints" / "README.txt").write_text("not a checkpoint")
    before = digests(out)

    status, output = run_to_end(single_command(out, **RUN), tmp_path / "auto.log")
    one_error(status, output, "every checkpoint", "step-2: trainable.safetensors does not match its checksum",
              "step-4: trainable.safetensors does not match its checksum", "--overwrite_output_dir")
    assert digests(out) == before  # nothing replaced, metrics.jsonl kept

    damaged = out / "checkpoints" / "step-4"
    status, output = run_to_end(single_command(out, **RUN, resume=str(damaged)), tmp_path / "path.log")
    one_error(status, output, f"--resume {damaged} is not a complete checkpoint", "checksum")
    assert digests(out) == before

    # Asked for explicitly, the run starts over: the damaged checkpoints and the old metrics are
    # replaced by the new run's, and files that are not the run's stay as they were.
    status, output = run_to_end(single_command(out, **RUN, overwrite_output_dir="true"), tmp_path / "over.log")
    assert status == 0, output[-4000:]
    assert "starting over" in output and "resumed from" not in output
    assert [r["step"] for r in train_records(out)] == [1, 2, 3, 4]
    assert ckpt.check_checkpoint(out / "checkpoints" / "step-4") is None
    after = digests(out)
    for user_file in ("notes.txt", "checkpoints/README.txt"):
        assert after[user_file] == before[user_file]


def test_rotation_and_cleanup_never_delete_a_directory_with_a_users_files(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    mine = make_checkpoint(tmp_path, 4, sealed=False)  # torn by name, but it holds a user's file
    (mine / "mine.txt").write_text("keep me")
    users = tmp_path / "checkpoints" / "step-0"
    users.mkdir()
    (users / "mine.txt").write_text("keep me too")
    ckpt.rotate(tmp_path, keep_last=1, log=lambda message: None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0", "step-3", "step-4"]
    assert ckpt.foreign_files(mine) == ["mine.txt"] and ckpt.foreign_files(tmp_path / "checkpoints" / "step-3") == []
    with pytest.raises(ckpt.CheckpointError, match="holds files this trainer does not write"):
        ckpt.remove_own_checkpoint(users)
    assert (users / "mine.txt").read_text() == "keep me too"


@pytest.mark.slow
def test_overwrite_output_dir_trains_beside_a_users_files_and_leaves_them(tmp_path):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "notes.txt").write_text("a user's notes")
    (out / "data" / "train.jsonl").write_text('{"text": "x"}\n')
    before = digests(out)
    status, output = run_to_end(single_command(out, **RUN), tmp_path / "refused.log")
    one_error(status, output, "not this trainer's run files (data/, notes.txt)", "--overwrite_output_dir")
    assert digests(out) == before
    status, output = run_to_end(single_command(out, **RUN, overwrite_output_dir="true"), tmp_path / "run.log")
    assert status == 0, output[-4000:]
    after = digests(out)
    assert {name: after[name] for name in before} == before
    assert ckpt.check_checkpoint(out / "checkpoints" / "step-4") is None and (out / "adapter").is_dir()


# --- --resume PATH to another run's checkpoint: its settings are compared, not only its shapes ------


@pytest.mark.slow
def test_another_runs_checkpoint_with_other_settings_needs_the_opt_in(trained, tmp_path):
    step_2 = trained / "checkpoints" / "step-2"
    out = tmp_path / "new"
    status, output = run_to_end(single_command(out, **RUN, resume=str(step_2), lr=0.5), tmp_path / "refused.log")
    assert status == 2, output[-4000:]
    errors = error_lines(output)
    assert len(errors) == 1 and "Traceback" not in output, output[-4000:]
    for fragment in (str(step_2), str(trained), "lr: 0.01 there, 0.5 now", "--allow_config_change true"):
        assert fragment in errors[0], errors[0]
    assert not out.exists()

    status, output = run_to_end(single_command(out, **RUN, resume=str(step_2), lr=0.5, allow_config_change="true"),
                                tmp_path / "allowed.log")
    assert status == 0, output[-4000:]
    assert "steps 1-2 trained under that run's settings, steps 3-4 train under this run's" in output
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["train"]["lr"] == 0.5
    assert run_config["resumed_from"] == {"checkpoint": str(step_2.resolve()), "step": 2,
                                          "changed": {"lr": [0.01, 0.5]}}
    assert [r["step"] for r in train_records(out)] == [3, 4]


@pytest.mark.slow
def test_another_runs_checkpoint_continues_to_another_length_without_the_opt_in(trained, tmp_path):
    out = tmp_path / "longer"
    status, output = run_to_end(single_command(out, **{**RUN, "max_steps": 6},
                                               resume=str(trained / "checkpoints" / "step-4")), tmp_path / "longer.log")
    assert status == 0, output[-4000:]
    assert json.loads((out / "run_config.json").read_text())["resumed_from"]["changed"] == {"max_steps": [4, 6]}
    assert [r["step"] for r in train_records(out)] == [5, 6]


@pytest.mark.slow
def test_a_checkpoint_without_its_runs_settings_needs_the_opt_in(trained, tmp_path):
    loose = tmp_path / "copied" / "step-4"
    shutil.copytree(trained / "checkpoints" / "step-4", loose)
    out = tmp_path / "new"
    status, output = run_to_end(single_command(out, **RUN, resume=str(loose)), tmp_path / "loose.log")
    assert status == 2, output[-4000:]
    errors = error_lines(output)
    assert len(errors) == 1 and str(loose.parent.parent / "run_config.json") in errors[0], output[-4000:]
    assert "--allow_config_change true" in errors[0] and not out.exists()
