"""Output directories are safe: a run or an export never deletes files it did not write, and never
writes into the base model's directory or a run's checkpoints. Every refusal is one message
(exit 2 through the CLI), before any model loads, and leaves every file as it was (sha256).

The training cases run `loretta-ds train` in-process, like tests/test_trainer_validation.py: the
checks come before the process group starts, and any model load fails the test.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from loretta_ds.run import contents as run_dir
from loretta_ds.cli import main
from loretta_ds.export import export_adapter, export_lora, export_merged
from test_export import make_base, make_run
from test_trainer_checkpoint import make_checkpoint


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def train(capsys, out: Path, *args) -> str:
    status = main(["train", "--output_dir", str(out), *map(str, args)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    return err


def test_a_run_never_replaces_a_users_merged_or_checkpoint_directory(builtin_model, no_model_loading, tmp_path,
                                                                      capsys):
    out = tmp_path / "dir"
    (out / "merged").mkdir(parents=True)
    (out / "merged" / "important.txt").write_text("a user's file")
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "checkpoints" / "step-1" / "mine.txt").write_text("another")
    before = digests(out)
    for extra in ([], ["--overwrite_output_dir"], ["--resume", "none"]):
        err = train(capsys, out, *extra)
        assert "merged/important.txt" in err and "checkpoints/step-1/mine.txt" in err, err
        assert "would delete them" in err and "another --output_dir" in err
        assert digests(out) == before and sorted(p.name for p in out.iterdir()) == ["checkpoints", "merged"]


def test_a_new_run_refuses_a_folder_of_a_users_files(builtin_model, no_model_loading, tmp_path, capsys):
    out = tmp_path / "dir"
    (out / "data").mkdir(parents=True)
    (out / "notes.txt").write_text("notes")
    (out / "data" / "train.jsonl").write_text('{"text": "x"}\n')
    before = digests(out)
    err = train(capsys, out)
    assert "already holds files that are not this trainer's run files (data/, notes.txt)" in err, err
    assert "another (new or empty) --output_dir" in err and "--overwrite_output_dir" in err
    assert digests(out) == before and sorted(p.name for p in out.iterdir()) == ["data", "notes.txt"]


def test_the_base_model_directory_is_never_an_output_directory(builtin_model, no_model_loading, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(builtin_model, model)
    before = digests(model)
    cases = [(model, "is the base model's directory"), (model / "runs" / "a", "is inside the base model's directory"),
             (tmp_path, "contains the base model's directory")]
    for out, fragment in cases:
        for extra in ([], ["--overwrite_output_dir"]):
            err = train(capsys, out, "--model", model, *extra)
            assert fragment in err and str(model) in err, err
    assert digests(model) == before and not (model / "runs").exists()


def test_overwrite_output_dir_does_not_combine_with_a_resume_path(builtin_model, no_model_loading, tmp_path, capsys):
    err = train(capsys, tmp_path / "run", "--overwrite_output_dir", "--resume", tmp_path / "step-3")
    assert "--overwrite_output_dir starts the run over" in err and "drop one of the two" in err
    assert not (tmp_path / "run").exists()


def test_the_survey_tells_run_files_from_a_users(tmp_path):
    out = tmp_path / "run"
    make_checkpoint(out, 2)
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter.safetensors").write_bytes(b"x")
    (out / "adapter" / "mine.txt").write_text("x")
    (out / "metrics.jsonl").write_text("")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.vm").write_bytes(b"x")
    (out / "checkpoints").joinpath("step-3").write_text("a file named like a checkpoint")
    found = run_dir.survey(out)
    assert found.collisions == ["checkpoints/step-3"]
    assert found.foreign == ["adapter/mine.txt"]
    own = sorted(str(p.relative_to(out)) for p in found.own)
    assert own == ["adapter/adapter.safetensors", "checkpoints/step-2", "metrics.jsonl", "tensorboard"]
    # Starting over removes only those; the user's file in adapter/ stays.
    (out / "checkpoints" / "step-3").unlink()
    run_dir.clear_previous_run(out, run_dir.survey(out), log=lambda message: None)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["adapter", "adapter/mine.txt", "checkpoints"]


# --- export ---------------------------------------------------------------------------------


@pytest.fixture
def trained_run(tmp_path):
    base = make_base(tmp_path / "base")
    run = tmp_path / "run"
    make_run(run, tmp_path / "base", base)
    for step in (2, 4):
        make_checkpoint(run, step)
    return run, tmp_path / "base"


def quiet(_message):
    pass


def test_export_refuses_a_runs_checkpoints_and_the_base_models_directory(trained_run, tmp_path, capsys):
    run, base = trained_run
    kept = {"run": digests(run), "base": digests(base)}
    status = main(["export", str(run), str(run / "checkpoints"), "--overwrite"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("error: ") == 1 and "a training run's checkpoints" in err, err
    for exporter in (export_merged, export_lora, export_adapter):
        for out in (run / "checkpoints", run / "checkpoints" / "step-4", run / "checkpoints" / "export"):
            with pytest.raises(ValueError, match="training run's checkpoints"):
                exporter(run, out, overwrite=True, log=quiet)
        for out in (base / "merged", base / "sub" / "dir"):
            with pytest.raises(ValueError, match="inside the base model's directory"):
                exporter(run, out, overwrite=True, log=quiet)
    other_run = tmp_path / "other-run"
    make_checkpoint(other_run, 1)
    with pytest.raises(ValueError, match="holds a training run"):
        export_merged(run, other_run, overwrite=True, log=quiet)
    assert {"run": digests(run), "base": digests(base)} == kept
    assert not (base / "merged").exists() and not (base / "sub").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]


def test_an_export_lists_its_files_and_a_run_replaces_only_such_an_export(trained_run, tmp_path):
    run, _ = trained_run
    merged = run / "merged"
    result = export_merged(run, merged, log=quiet)
    provenance = json.loads((merged / "loretta_export.json").read_text())
    assert sorted(provenance["files"]) == sorted(p.name for p in merged.iterdir())
    assert set(result.files) <= set(provenance["files"])
    assert run_dir.survey(run).collisions == [] and merged in run_dir.survey(run).own
    (merged / "important.txt").write_text("a user's file, added to the export")
    assert run_dir.survey(run).collisions == ["merged/important.txt"]
    with pytest.raises(ValueError, match="merged/important.txt"):
        run_dir.check_collisions(run, run_dir.survey(run))
