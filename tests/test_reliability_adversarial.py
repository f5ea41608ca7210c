"""What a hostile or careless user does to run directories, adapters and exports, and what must
hold: a clear refusal (one `error:` paragraph, exit 2, no traceback) or the correct behaviour, and
every file the user had before byte-identical afterwards (sha256 of every file).

Fast tier: every case runs `loretta-ds ...` in this process on the tiny test models; the training
cases fail before any model loads (``no_model_loading`` makes a load fail the test).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from loretta_ds.cli import main
from loretta_ds.run import contents
from test_export import make_base, make_run


@pytest.fixture
def finished_run(tmp_path):
    """A run directory as training leaves it (run_config.json + adapter/) on a tiny base."""
    base = make_base(tmp_path / "base")
    run = tmp_path / "run"
    make_run(run, tmp_path / "base", base)
    return run, tmp_path / "base"


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(capsys, *argv) -> str:
    """Run the CLI; it must refuse with one clear message (exit 2, no traceback)."""
    status = main([*map(str, argv)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    return err


def quiet(_message):
    pass


# --- 1. ownership comes from what the program wrote, never from a name -----------------------------


def users_files(directory: Path) -> None:
    """Files a user keeps under the names a run writes: their own metrics, plot and report."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.jsonl").write_text('{"epoch": 1, "my_metric": 0.5}\n')
    (directory / "loss.png").write_bytes(b"\x89PNG a user's plot")
    (directory / "param_report.json").write_text('{"mine": true}\n')


def users_peft_adapter(directory: Path) -> None:
    adapter = directory / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"a user's PEFT weights")
    (adapter / "README.md").write_text("# my adapter\n")


@pytest.mark.parametrize("layout", ["run files", "peft adapter", "tensorboard"])
def test_a_users_files_at_the_runs_names_are_never_taken_for_the_runs(layout, builtin_model, no_model_loading,
                                                                      tmp_path, capsys):
    out = tmp_path / "mine"
    if layout == "run files":
        users_files(out)
        named = ["loss.png", "metrics.jsonl", "param_report.json"]
    elif layout == "peft adapter":
        users_peft_adapter(out)
        named = ["adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    else:
        (out / "tensorboard").mkdir(parents=True)
        (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"a user's own logs")
        named = ["tensorboard/events.out.tfevents.1.host"]
    before = digests(out)
    for extra in ([], ["--overwrite_output_dir"], ["--resume", "none"]):
        err = refused(capsys, "train", "--output_dir", out, "--max_steps", 2, *extra)
        assert all(name in err for name in named), err
        assert "did not write" in err and "another --output_dir" in err, err
        assert digests(out) == before
        assert sorted(p.name for p in out.iterdir()) == sorted({n.split("/")[0] for n in named})


def test_the_claim_makes_run_files_the_runs_and_only_the_runs_own_claim_counts(tmp_path):
    out = tmp_path / "run"
    users_files(out)
    assert sorted(contents.survey(out).collisions) == ["loss.png", "metrics.jsonl", "param_report.json"]
    # A file at the claim's name that the program did not write claims nothing (and is itself a user's).
    (out / ".loretta-run-files.json").write_text('{"names": ["metrics.jsonl", "loss.png", "param_report.json"]}')
    assert ".loretta-run-files.json" in contents.survey(out).collisions
    assert "metrics.jsonl" in contents.survey(out).collisions
    (out / ".loretta-run-files.json").unlink()
    contents.claim(out)
    found = contents.survey(out)
    assert found.collisions == [] and found.foreign == []
    assert sorted(p.name for p in found.own) == [".loretta-run-files.json", "loss.png", "metrics.jsonl",
                                                 "param_report.json"]
    # Starting over removes the run's files, the claim with them; a user's file beside them stays.
    (out / "notes.txt").write_text("mine")
    contents.clear_previous_run(out, contents.survey(out), log=quiet)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_run_directory_from_before_the_claim_is_still_the_runs(finished_run):
    run, _ = finished_run  # run_config.json + adapter/, no claim: what earlier versions wrote
    (run / "metrics.jsonl").write_text("")
    found = contents.survey(run)
    assert found.collisions == [] and found.foreign == []
    (run / "run_config.json").unlink()
    assert sorted(contents.survey(run).collisions) == ["adapter/adapter.safetensors", "adapter/adapter_config.json",
                                                       "adapter/adapter_model.safetensors", "metrics.jsonl"]


def test_export_overwrite_replaces_only_an_export_this_program_wrote(finished_run, tmp_path, capsys):
    run, _ = finished_run
    folder = tmp_path / "my-folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = digests(folder)
    for fmt in ("merged", "peft-lora", "adapter"):
        err = refused(capsys, "export", run, folder, "--format", fmt, "--overwrite")
        assert "not an export of this program" in err and "choose another OUT_DIR" in err, err
        assert digests(folder) == before
    assert not (tmp_path / "my-folder.export-incomplete").exists()
    # An export of its own is replaced, every format (the adapter format records its files too);
    # once a user adds a file to it, it is no longer replaced.
    for fmt in ("merged", "peft-lora", "adapter"):
        out = tmp_path / f"export-{fmt}"
        assert main(["export", str(run), str(out), "--format", fmt]) == 0
        assert main(["export", str(run), str(out), "--format", fmt, "--overwrite"]) == 0
        (out / "my-notes.txt").write_text("added by hand")
        kept = digests(out)
        err = refused(capsys, "export", run, out, "--format", fmt, "--overwrite")
        assert "not an export of this program" in err
        assert digests(out) == kept


@pytest.mark.parametrize("suffix", [".export-incomplete", ".export-replaced"])
def test_a_users_directory_at_an_exports_temporary_names_is_never_deleted(suffix, finished_run, tmp_path, capsys):
    run, _ = finished_run
    out = tmp_path / "X"
    users = tmp_path / f"X{suffix}"
    users.mkdir()
    (users / "keep.txt").write_text("a user's folder that happens to have this name")
    before = digests(users)
    for extra in ([], ["--overwrite"]):
        err = refused(capsys, "export", run, out, *extra)
        assert str(users) in err and "was not left by an export" in err, err
        assert digests(users) == before and not out.exists()
    # In a run directory too: the run's final export would have removed merged.export-*.
    (run / f"merged{suffix}").mkdir()
    (run / f"merged{suffix}" / "keep.txt").write_text("mine")
    assert contents.survey(run).collisions == [f"merged{suffix}/keep.txt"]


def test_what_an_interrupted_export_leaves_is_still_cleaned_up(finished_run, tmp_path):
    run, _ = finished_run
    out = tmp_path / "X"
    complete = tmp_path / "complete"
    assert main(["export", str(run), str(complete)]) == 0
    # Killed between dropping the marker and the rename: a complete export at the temporary name.
    shutil.copytree(complete, tmp_path / "X.export-incomplete")
    (tmp_path / "X.export-replaced").mkdir()  # killed as the old export was being moved aside: empty
    assert main(["export", str(run), str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "base", "complete", "run"]


# --- 2. damage that would train and export silently -------------------------------------------------


def drop_tensor(model_dir: Path, name_part: str) -> str:
    """Delete the first tensor whose name contains ``name_part`` from a single-file model."""
    from safetensors.torch import load_file, save_file

    weights = model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in sorted(tensors) if name_part in n)
    del tensors[name]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return name


def edit_config(model_dir: Path, **changes) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture
def damaged_models(builtin_model, tmp_path) -> dict[str, tuple[Path, str]]:
    """Copies of the built-in model: (directory, what the refusal must name)."""
    layers = json.loads((builtin_model / "config.json").read_text())["num_hidden_layers"]
    found = {}
    for case in ("tensor deleted", "more layers", "fewer layers"):
        model = tmp_path / case.replace(" ", "-")
        shutil.copytree(builtin_model, model)
        if case == "tensor deleted":
            found[case] = (model, drop_tensor(model, "down_proj.weight"))
        elif case == "more layers":
            edit_config(model, num_hidden_layers=layers + 1)
            found[case] = (model, f"model.layers.{layers}.")
        else:
            edit_config(model, num_hidden_layers=layers - 1)
            found[case] = (model, f"model.layers.{layers - 1}.")
    return found


def test_train_refuses_a_model_whose_weights_do_not_match_its_config(damaged_models, no_model_loading, tmp_path,
                                                                     capsys):
    for case, (model, named) in damaged_models.items():
        before = digests(model)
        out = tmp_path / f"run-{model.name}"
        err = refused(capsys, "train", "--model", model, "--output_dir", out, "--max_steps", 2)
        assert "does not match its config.json" in err and named in err, (case, err)
        assert ("missing from the weights" if case != "fewer layers" else "in the weights but not in the model") in err
        assert "re-download" in err and not out.exists() and digests(model) == before


def test_generate_and_export_refuse_a_base_missing_a_tensor(damaged_models, tmp_path, capsys):
    model, named = damaged_models["tensor deleted"]
    err = refused(capsys, "generate", model, "--prompt", "hi", "--max_new_tokens", 2)
    assert "missing from the weights" in err and named in err, err
    # A run on that base: neither its merged export nor generate loads the damaged base.
    base = make_base(tmp_path / "base", shard=None)
    run = tmp_path / "run"
    make_run(run, tmp_path / "base", base)
    named = drop_tensor(tmp_path / "base", "down_proj.weight")
    before = digests(tmp_path)
    for argv in (["export", run, tmp_path / "merged"], ["generate", run, "--prompt", "hi", "--max_new_tokens", 2]):
        err = refused(capsys, *argv)
        assert "missing from the weights" in err and named in err, err
    assert digests(tmp_path) == before and not (tmp_path / "merged").exists()


def flip_exponent_bit(weights: Path) -> None:
    """Flip the top exponent bit of the first float32 value of the first tensor (x -> x * 2^±128)."""
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    first = min((v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"))
    data[8 + header_len + first + 3] ^= 0x40
    weights.write_bytes(bytes(data))


def test_a_damaged_adapter_is_refused_by_export_and_generate(finished_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run, _ = finished_run
    weights = run / "adapter" / "adapter.safetensors"
    assert "weights_sha256" in json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert main(["export", str(run), str(tmp_path / "sound")]) == 0  # the undamaged adapter exports
    flip_exponent_bit(weights)
    before = digests(tmp_path)
    commands = [["export", run, tmp_path / "merged"], ["export", run, tmp_path / "lora", "--format", "peft-lora"],
                ["generate", run, "--prompt", "hi", "--max_new_tokens", 2]]
    for argv in commands:
        err = refused(capsys, *argv)
        assert "does not match the checksum recorded when it was saved" in err, err
    assert digests(tmp_path) == before
    # NaN values in an adapter without a recorded checksum (written by an earlier version).
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    del config["weights_sha256"]
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = torch_full_like_nan(tensors[first])
    save_file(tensors, str(weights))
    before = digests(tmp_path)
    for argv in commands:
        err = refused(capsys, *argv)
        assert "non-finite values" in err and first in err, err
    assert digests(tmp_path) == before
    assert not any((tmp_path / name).exists() for name in ("merged", "lora"))


def torch_full_like_nan(tensor):
    import torch

    return torch.full_like(tensor, float("nan"))


# --- 3. guards that a missing file turned off ---------------------------------------------------------


def plan_of(argv: list[str]):
    from loretta_ds.cli import build_parser
    from loretta_ds.run_config import config_from_args
    from loretta_ds.train_plan import build_plan

    return build_plan(config_from_args(build_parser("train").parse_args(["train", *map(str, argv)])), world_size=1)


def write_run_with_checkpoint(out: Path, argv: list[str], step: int = 2, record_settings: bool = True) -> None:
    """What a run of ``argv`` leaves after ``step`` steps (claim, run_config.json, one checkpoint), built
    from its plan: the trainable tensors' names and shapes, the data position, the settings."""
    import torch
    from safetensors.torch import save_file

    from loretta_ds.distributed.checkpoint import write_marker
    from loretta_ds.run.directory import write_run_record
    from loretta_ds.train_plan import make_batches

    plan = plan_of(["--output_dir", out, *argv])
    path = out / "checkpoints" / f"step-{step}"
    (path / "rng").mkdir(parents=True)
    save_file({name: torch.zeros(shape) for name, shape in plan.trainable_shapes.items()},
              str(path / "trainable.safetensors"))
    save_file({}, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text("{}")
    state = {"step": step, "data": make_batches(plan, 0).state_dict(), "world_size": 1,
             "global_batch": plan.global_batch}
    if record_settings:
        state["settings"] = plan.settings
    (path / "trainer_state.json").write_text(json.dumps(state))
    write_marker(path, step)
    contents.claim(out)
    write_run_record(out, plan.record())


RUN = ["--max_steps", 4, "--seq_len", 48, "--micro_batch_size", 2, "--eval_every", 0, "--export", "false"]
CHANGED = ["--lr", 0.5, "--alpha", 64, "--dropout", 0.3, "--grad_clip", 0]


def test_resume_auto_compares_with_the_checkpoint_when_run_config_is_gone(builtin_model, no_model_loading, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    write_run_with_checkpoint(out, RUN)
    (out / "run_config.json").unlink()
    before = digests(out)
    err = refused(capsys, "train", "--output_dir", out, *RUN, *CHANGED, "--resume", "auto")
    assert "trained under other settings" in err and "run_config.json is missing" in err, err
    for fragment in ("lr: 0.01 there, 0.5 now", "alpha: 16.0 there, 64.0 now", "dropout: 0.0 there, 0.3 now",
                     "grad_clip: 1.0 there, 0.0 now"):
        assert fragment in err, err
    assert digests(out) == before
    # Only its length may change: a longer run continues it (up to loading the model).
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["train", "--output_dir", str(out), *map(str, RUN), "--max_steps", "6"])
    assert "continuing" not in capsys.readouterr().err


def test_resume_auto_refuses_an_unknown_checkpoint_without_run_config(builtin_model, no_model_loading, tmp_path,
                                                                      capsys):
    out = tmp_path / "run"
    write_run_with_checkpoint(out, RUN, record_settings=False)  # a checkpoint of an earlier version
    (out / "run_config.json").unlink()
    before = digests(out)
    err = refused(capsys, "train", "--output_dir", out, *RUN, *CHANGED)
    assert "does not record the settings it trained under" in err and "--allow_config_change true" in err, err
    assert digests(out) == before


@pytest.fixture
def alone_in_this_process(monkeypatch):
    """init_distributed sets the launcher's variables for a world of one; put them back afterwards."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("existing", ["absent", "a user's folder", "an unfinished run"])
def test_a_start_that_fails_before_step_one_leaves_the_directory_as_it_was(existing, builtin_model, tmp_path,
                                                                           monkeypatch, alone_in_this_process,
                                                                           capsys):
    import transformers

    out = tmp_path / "run"
    extra = []
    if existing == "a user's folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        extra = ["--overwrite_output_dir"]
    elif existing == "an unfinished run":  # its record, written at its start; it never reached a checkpoint
        out.mkdir()
        contents.claim(out)
        from loretta_ds.run.directory import write_run_record

        write_run_record(out, plan_of(["--output_dir", out, *RUN]).record())
    before = digests(out) if out.exists() else None

    def fails_to_load(*args, **kwargs):
        raise OSError("Input/output error reading model.safetensors")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fails_to_load)
    with pytest.raises(OSError, match="Input/output error"):
        main(["train", "--output_dir", str(out), *map(str, RUN), *extra])
    assert "nothing was trained: removed what this start wrote" in capsys.readouterr().err
    assert (digests(out) if out.exists() else None) == before
    # The corrected command (another seed, say) is not refused for a run that never trained (the
    # unfinished run found there is still compared with it: that record was not this start's).
    corrected = ["--seed", "7"] if existing != "an unfinished run" else []
    with pytest.raises(OSError, match="Input/output error"):
        main(["train", "--output_dir", str(out), *map(str, RUN), *corrected, *extra])
    assert (digests(out) if out.exists() else None) == before


def test_an_out_of_range_seed_is_refused_before_anything_is_written(tmp_path, capsys):
    err = refused(capsys, "train", "--output_dir", tmp_path / "run", "--seed", 2 ** 40)
    assert "seed must be below 2147483648" in err and not (tmp_path / "run").exists()


# --- 4. requeue of a finished run, and a finished run asked for its export -------------------------------


def write_finished_run(out: Path, argv: list[str]) -> None:
    """What a run of ``argv`` on the built-in model leaves when killed right after "adapter saved":
    the claim, the finished run_config.json and the adapter, no merged/."""
    import transformers

    from loretta_ds import inject, save_adapter
    from loretta_ds.run.directory import write_run_record

    plan = plan_of(["--output_dir", out, *argv])
    model = transformers.AutoModelForCausalLM.from_pretrained(plan.model_path)
    inject(model, plan.adapter)
    save_adapter(model, out / "adapter")
    contents.claim(out)
    write_run_record(out, plan.record(finished=True, final_step=plan.total_steps))


@pytest.mark.parametrize("case", ["killed after adapter saved", "export cut short", "--export true later",
                                  "export complete"])
def test_a_finished_run_started_again_completes_its_export(case, builtin_model, tmp_path, capsys):
    out = tmp_path / "run"
    run = RUN[:-2]  # with the merged export (the default)
    write_finished_run(out, run)
    argv = ["train", "--output_dir", str(out), *map(str, run)]
    if case == "export cut short":  # killed during the export: its temporary directory, marker and all
        (out / "merged.export-incomplete").mkdir()
        (out / "merged.export-incomplete" / "EXPORT_INCOMPLETE").write_text('{"pid": 1}')
        (out / "merged.export-incomplete" / "model-00001-of-00002.safetensors").write_bytes(b"half")
    if case == "--export true later":
        assert main([*argv, "--export", "false"]) == 0
        assert not (out / "merged").exists()
        argv = [*argv, "--export", "true"]
    if case == "export complete":
        assert main(argv) == 0
    capsys.readouterr()
    before = digests(out)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "nothing to train" in printed
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "loretta_export.json").is_file()
    assert not (out / "merged.export-incomplete").exists()
    after = digests(out)
    if case == "export complete":  # nothing to do: not even the export is rewritten
        assert after == before and "merged model exported" not in printed
    else:
        assert "merged model exported" in printed
        # Everything that was there stays byte-identical; only the export is new.
        assert {k: v for k, v in after.items() if k in before and not k.startswith("merged.")} == \
            {k: v for k, v in before.items() if not k.startswith("merged.")}


# --- 5. generate on a run speaks the run's chat template; every export carries it ---------------------

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_generate_on_a_run_and_on_its_exports_use_the_trained_chat_template(finished_run, tmp_path, capsys):
    from loretta_ds.commands.generate import load_for_generation

    run, _ = finished_run
    (run / "adapter" / "chat_template.jinja").write_text(TEMPLATE)
    _, tokenizer, _ = load_for_generation(run)
    assert tokenizer.chat_template == TEMPLATE
    for fmt in ("merged", "peft-lora", "adapter"):
        assert main(["export", str(run), str(tmp_path / fmt), "--format", fmt]) == 0
        assert (tmp_path / fmt / "chat_template.jinja").read_text() == TEMPLATE, fmt
    capsys.readouterr()
    answers = {}
    for name, path in (("run", run), ("merged", tmp_path / "merged"), ("adapter export", tmp_path / "adapter")):
        assert main(["generate", str(path), "--prompt", "hello", "--max_new_tokens", "6", "--chat", "true",
                     "--json"]) == 0, capsys.readouterr().err
        answers[name] = capsys.readouterr().out
    assert answers["run"] == answers["merged"] == answers["adapter export"], answers


# --- 8. errors name only flags that exist, and say what is true ------------------------------------------


def train_flags() -> set[str]:
    from loretta_ds.cli import build_parser

    parser = build_parser("train")
    train = next(a for a in parser._actions if getattr(a, "choices", None) and "train" in a.choices).choices["train"]
    return {option for action in train._actions for option in action.option_strings}


def assert_named_flags_exist(err: str) -> None:
    import re

    named = set(re.findall(r"(?<![\w-])--[a-z][a-z_]*", err))
    assert named <= train_flags(), f"the message names flags that do not exist: {named - train_flags()}: {err}"


def test_data_errors_recommend_flags_that_exist(builtin_model, no_model_loading, tmp_path, capsys):
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text("".join(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n" for i in range(8)))
    odd = tmp_path / "odd.jsonl"
    odd.write_text("".join(json.dumps({"body": f"x {i}", "tag": "y"}) + "\n" for i in range(8)))
    for data, fragment in ((numbered, "write each label as its word"), (odd, "--format")):
        err = refused(capsys, "train", "--output_dir", tmp_path / "run", "--dataset", data)
        assert fragment in err, err
        assert_named_flags_exist(err)
    assert not (tmp_path / "run").exists()


def test_resume_from_a_run_directory_or_a_folder_says_what_it_is(builtin_model, no_model_loading, tmp_path, capsys):
    run = tmp_path / "earlier"
    write_run_with_checkpoint(run, RUN, step=2)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    before = digests(tmp_path)
    err = refused(capsys, "train", "--output_dir", tmp_path / "new", *RUN, "--resume", run)
    assert "is a run directory, not a checkpoint" in err and str(run / "checkpoints" / "step-2") in err, err
    assert "interrupted" not in err
    err = refused(capsys, "train", "--output_dir", tmp_path / "new", *RUN, "--resume", folder)
    assert "is not a checkpoint" in err and "interrupted" not in err, err
    assert digests(tmp_path) == before and not (tmp_path / "new").exists()


def test_a_failed_first_checkpoint_does_not_call_a_missing_one_intact(tmp_path, monkeypatch):
    from loretta_ds.distributed import checkpoint as ckpt

    monkeypatch.setattr(ckpt, "gather_training_state", lambda engine, model, names: ({}, {"moments": {}}))

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_write", disk_full)
    with pytest.raises(ckpt.CheckpointError) as refusal:
        ckpt.save_checkpoint(tmp_path, 1, None, None, [], {}, keep_last=2, rank=0, log=quiet)
    assert "No earlier checkpoint exists" in str(refusal.value) and "none, intact" not in str(refusal.value)
    assert not list((tmp_path / "checkpoints").iterdir())


# --- 9. a clear error where a traceback was ----------------------------------------------------------------


def ds_config_with(tmp_path: Path, name: str, text_changes: dict) -> Path:
    from loretta_ds.distributed.ds_config import load_ds_config

    config = load_ds_config("zero3")
    config.update(text_changes)
    path = tmp_path / name
    path.write_text(json.dumps(config).replace('"INF"', "Infinity").replace('"NAN"', "NaN"))
    return path


def model_with_config(builtin_model: Path, directory: Path, **changes) -> Path:
    shutil.copytree(builtin_model, directory)
    edit_config(directory, **changes)
    return directory


@pytest.mark.parametrize("case", ["output dir is a file", "output dir is a dangling link", "dist_timeout 1e14",
                                  "train_batch_size Infinity", "train_batch_size NaN", "optimizer SGD",
                                  "heads do not divide hidden", "unknown rope type", "vocab and embedding differ",
                                  "no weights", "truncated weights", "gpu_memory inf"])
def test_what_was_a_traceback_is_one_clear_error(case, builtin_model, no_model_loading, tmp_path, capsys):
    out = tmp_path / "run"
    argv, fragment = ["train", "--output_dir", out, "--max_steps", 2], None
    if case == "output dir is a file":
        out.write_text("a user's file")
        fragment = "is a file, not a directory"
    elif case == "output dir is a dangling link":
        out.symlink_to(tmp_path / "nowhere")
        fragment = "which does not exist"
    elif case == "dist_timeout 1e14":
        argv += ["--dist_timeout", 10 ** 14]
        fragment = "dist_timeout must be at most"
    elif case.startswith("train_batch_size"):
        value = "INF" if case.endswith("Infinity") else "NAN"
        argv += ["--ds_config", ds_config_with(tmp_path, "ds.json", {"train_batch_size": value})]
        fragment = "train_batch_size in the DeepSpeed config must be a positive integer"
    elif case == "optimizer SGD":
        argv += ["--ds_config", ds_config_with(tmp_path, "ds.json", {"optimizer": {"type": "SGD", "params": {}}})]
        fragment = "optimizer.type 'SGD'"
        err = refused(capsys, "plan", *argv[1:])  # plan refuses it too, where it used to accept it
        assert fragment in err, err
    elif case == "heads do not divide hidden":
        argv += ["--model", model_with_config(builtin_model, tmp_path / "m", num_attention_heads=3,
                                              num_key_value_heads=3)]
        fragment = "num_attention_heads must divide hidden_size"
    elif case == "unknown rope type":
        argv += ["--model", model_with_config(builtin_model, tmp_path / "m",
                                              rope_scaling={"rope_type": "bogus", "factor": 2.0})]
        fragment = "rope type 'bogus'"
    elif case == "vocab and embedding differ":
        argv += ["--model", model_with_config(builtin_model, tmp_path / "m", vocab_size=5000)]
        fragment = "model.embed_tokens.weight [1024, 128] (the config makes [5000, 128])"
    elif case == "no weights":
        model = model_with_config(builtin_model, tmp_path / "m")
        (model / "model.safetensors").unlink()
        argv += ["--model", model]
        fragment = "no model weights in"
    elif case == "truncated weights":
        model = model_with_config(builtin_model, tmp_path / "m")
        weights = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(weights[:len(weights) // 2])
        argv += ["--model", model]
        fragment = "is truncated"
    else:
        argv, fragment = ["estimate", "--model", "llama2-7b", "--gpu_memory", "inf"], "gpu_memory must be a number of GiB > 0"
    before = digests(tmp_path)
    err = refused(capsys, *argv)
    assert fragment in err, err
    assert digests(tmp_path) == before
    assert out.is_symlink() or out.is_file() or not out.exists()


def test_a_read_only_output_location_is_one_clear_error(builtin_model, no_model_loading, tmp_path, capsys):
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        err = refused(capsys, "train", "--output_dir", mount / "run", "--max_steps", 2)
        assert "cannot be written (a read-only file system" in err, err
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- 7. the schedule and the settings as they run, said where they surprise --------------------------------


@pytest.mark.parametrize("flags, fragment", [
    (["--warmup_steps", 0], "--warmup_steps 0 runs as 2 warmup steps"),
    (["--max_steps", 2, "--warmup_steps", 1000], "the warmup (1000 steps) is as long as the run or longer (2 steps)"),
])
def test_plan_says_how_the_lr_schedule_differs_from_the_flags(flags, fragment, builtin_model, tmp_path, capsys):
    assert main(["plan", "--output_dir", str(tmp_path / "run"), "--max_steps", "8", *map(str, flags)]) == 0
    assert f"warning: {fragment}" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_estimate_refuses_a_micro_batch_of_zero(capsys):
    err = refused(capsys, "estimate", "--model", "llama2-7b", "--micro_batch_size", 0)
    assert "micro_batch_size must be an integer >= 1, got 0" in err


def test_eval_batches_zero_turns_evaluation_off_and_below_zero_is_refused(builtin_model, tmp_path, capsys):
    assert main(["plan", "--output_dir", str(tmp_path / "run"), "--eval_batches", "0"]) == 0
    capsys.readouterr()
    err = refused(capsys, "plan", "--output_dir", str(tmp_path / "run"), "--eval_batches", -1)
    assert "eval_batches must be an integer >= 0, got -1" in err


# --- 6 and 7. YAML: an alias bomb is refused unexpanded; a key given twice is refused -----------------------


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path, capsys):
    # 9^12 values once expanded: building anything from it (an error message included) took minutes and GBs.
    lines = ["target_modules:", "  - &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 12):
        prev, cur = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"  - &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    err = refused(capsys, "plan", "--config", bomb)
    assert "expands into more than 10,000 values through its aliases" in err, err


def test_a_yaml_key_given_twice_is_refused(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 0.01\nmax_steps: 4\nlr: 0.5\n")
    err = refused(capsys, "plan", "--config", config)
    assert "the key 'lr' is given twice (line 3)" in err, err


def reviews(path: Path, count: int) -> Path:
    """A classification file of ``count`` records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"review number {i}", "label": ["good", "bad"][i % 2]}) + "\n"
                            for i in range(count)))
    return path


def test_a_global_batch_larger_than_the_data_is_said_with_the_fix(builtin_model, tmp_path, capsys):
    data = reviews(tmp_path / "data.jsonl", 20)  # 19 train examples once one is held out
    argv = ["plan", "--output_dir", tmp_path / "run", "--dataset", data, "--max_steps", 2, "--seq_len", 32]
    assert main([*map(str, argv), "--micro_batch_size", "8", "--grad_accum", "4"]) == 0
    printed = capsys.readouterr().out
    assert ("warning: the global batch (32 = micro batch 8 x grad accum 4 x 1 process(es)) is larger than the "
            "training set (19 examples): every step spans more than one epoch") in printed, printed
    assert "to a global batch of at most 19" in printed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["NAN", -0.5, 2])
def test_a_scheduler_ratio_outside_zero_one_is_refused_naming_the_key(value, tmp_path, capsys):
    from loretta_ds.distributed.ds_config import load_ds_config

    scheduler = load_ds_config("zero3")["scheduler"]
    scheduler["params"]["cos_min_ratio"] = value
    ds = ds_config_with(tmp_path, "ds.json", {"scheduler": scheduler})
    before = digests(tmp_path)
    err = refused(capsys, "plan", "--output_dir", tmp_path / "run", "--ds_config", ds, "--max_steps", 2)
    assert "scheduler.params.cos_min_ratio in the DeepSpeed config must be a number in [0, 1]" in err, err
    assert digests(tmp_path) == before and not (tmp_path / "run").exists()


def test_an_empty_dataset_list_in_yaml_is_refused_not_the_bundled_task(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: []\nmax_steps: 2\n")
    for command in ("plan", "train"):
        err = refused(capsys, command, "--config", config, "--output_dir", tmp_path / "run")
        assert "dataset is an empty list: it names no data" in err, err
    assert not (tmp_path / "run").exists()


def test_a_run_continued_from_another_directory_names_the_same_data(builtin_model, no_model_loading, tmp_path,
                                                                      monkeypatch, capsys):
    from loretta_ds.distributed.checkpoint import write_marker

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    data = reviews(work / "data.jsonl", 40)
    elsewhere.mkdir()
    out = tmp_path / "run"
    monkeypatch.chdir(work)
    write_run_with_checkpoint(out, [*RUN, "--dataset", "data.jsonl"])
    assert json.loads((out / "run_config.json").read_text())["train"]["dataset"] == [str(data)]
    monkeypatch.chdir(elsewhere)
    with pytest.raises(AssertionError, match="a model was loaded"):  # continued: up to loading the model
        main(["train", "--output_dir", str(out), *map(str, RUN), "--dataset", "../work/data.jsonl"])
    # A record of an earlier version holds the path as typed: from its own directory it is the same
    # data; from another, where that name is another file (or none), it is refused as another run.
    for record in (out / "run_config.json", out / "checkpoints" / "step-2" / "trainer_state.json"):
        state = json.loads(record.read_text())
        (state["train"] if "train" in state else state["settings"])["dataset"] = ["data.jsonl"]
        record.write_text(json.dumps(state))
    write_marker(out / "checkpoints" / "step-2", 2)  # the checkpoint's own record of its files' sizes
    before = digests(out)
    err = refused(capsys, "train", "--output_dir", out, *RUN, "--dataset", "../work/data.jsonl")
    assert "dataset: ['data.jsonl'] there" in err, err
    assert digests(out) == before
    monkeypatch.chdir(work)
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["train", "--output_dir", str(out), *map(str, RUN), "--dataset", "data.jsonl"])


def test_instruction_data_on_a_tokenizer_without_eos_is_refused(builtin_model, no_model_loading, tmp_path, capsys):
    model = tmp_path / "no-eos"
    shutil.copytree(builtin_model, model)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    before = digests(tmp_path)
    err = refused(capsys, "train", "--model", model, "--dataset", "bundled:instruct", "--output_dir",
                  tmp_path / "run", "--max_steps", 2)
    assert "the tokenizer has no end-of-sequence token (eos_token), so the instruction examples" in err, err
    assert "tokenizer_config.json" in err
    assert digests(tmp_path) == before and not (tmp_path / "run").exists()


def test_generate_refuses_a_prompt_past_the_models_positions(builtin_model, tmp_path, capsys):
    long_prompt = " ".join(["word"] * 600)  # the built-in model has 512 positions
    err = refused(capsys, "generate", builtin_model, "--prompt", long_prompt, "--max_new_tokens", 4)
    assert "runs past the model's 512 positions (max_position_embeddings): shorten the prompt" in err, err
    err = refused(capsys, "generate", builtin_model, "--prompt", "hello", "--max_new_tokens", 600)
    assert "with --max_new_tokens 600 that runs past the model's 512 positions" in err
    assert "lower --max_new_tokens to" in err, err


# --- 6. a rank or a record that would blow up is refused before anything is built ----------------------


@pytest.mark.parametrize("command", ["plan", "estimate", "count"])
def test_a_tensor_rank_beyond_the_layers_is_refused_before_any_core_exists(command, builtin_model, tmp_path, capsys):
    import resource

    argv = {"plan": ["plan", "--output_dir", tmp_path / "run", "--max_steps", 2],
            "estimate": ["estimate", "--model", "llama2-7b"], "count": ["count", "--model", "llama2-7b"]}[command]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = refused(capsys, *argv, "--tensor_rank", 100000)
    assert "tensor_rank 100000 is more than" in err and "can use: at most" in err, err
    assert "use --tensor_rank" in err and "or less" in err
    # Cores of rank 100000 hold 10^10 numbers per bond: refused before any is allocated.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024  # KiB
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("layout", ["json lines", "json array"])
def test_a_deeply_nested_record_is_one_clear_error_naming_the_line(layout, builtin_model, no_model_loading, tmp_path,
                                                                   capsys):
    deep = "[" * 50_000 + "]" * 50_000
    if layout == "json lines":
        data = tmp_path / "data.jsonl"
        data.write_text(json.dumps({"text": "fine", "label": "a"}) + "\n" + '{"text": "x", "label": ' + deep + "}\n")
        where = "line 2: a value is nested deeper than the JSON reader allows"
    else:
        data = tmp_path / "data.json"
        data.write_text('[{"text": "x", "label": ' + deep + "}]")
        where = "a value is nested deeper than the JSON reader allows"
    before = digests(tmp_path)
    err = refused(capsys, "train", "--output_dir", tmp_path / "run", "--dataset", data)
    assert f"{data}: malformed JSON, {where}" in err, err
    assert digests(tmp_path) == before and not (tmp_path / "run").exists()


# --- 10. one policy for examples too long for --seq_len, packed or not -----------------------------------


def test_too_long_examples_are_dropped_and_counted_packed_or_not_and_refused_on_request(builtin_model, no_model_loading,
                                                                                       tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    records = [{"prompt": f"question {i}?", "completion": f" answer {i}"} for i in range(30)]
    records[4]["prompt"] = records[9]["prompt"] = "a very long question " * 40
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["--output_dir", tmp_path / "run", "--dataset", data, "--seq_len", 32, "--max_steps", 2,
            "--eval_dataset", data]
    for packing in ("false", "true"):
        plan = plan_of([*argv, "--packing", packing])
        assert plan.data.train_stats.dropped == 2 and len(plan.data.train) == 28, packing
        assert "2 had no answer token left and were dropped" in plan.data.summary()
        assert "dropped and counted (--too_long drop; --too_long refuse stops the run instead)" in plan.data.summary()
    for packing in ("false", "true"):
        err = refused(capsys, "train", *argv, "--packing", packing, "--too_long", "refuse")
        assert "--too_long refuse: " in err and "data.jsonl: record 5 has" in err, err
        assert "which leave no answer token within --seq_len 32 (2 such examples)" in err
        assert "--too_long drop" in err
    assert not (tmp_path / "run").exists()


# --- 9 (continued). a pickle, a pre-quantized model, a full disk under metrics.jsonl --------------------


def test_a_pickle_only_model_directory_is_refused_with_how_to_convert(builtin_model, no_model_loading, tmp_path,
                                                                      capsys):
    import argparse

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(builtin_model, model)
    state = load_file(str(model / "model.safetensors"))
    state["training_args"] = argparse.Namespace(lr=1.0)  # an object: a pickle, not a file of tensors
    torch.save(state, model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    before = digests(tmp_path)
    for argv in (["train", "--model", model, "--output_dir", tmp_path / "run", "--max_steps", 2],
                 ["generate", model, "--prompt", "hi", "--max_new_tokens", 2]):
        err = refused(capsys, *argv)
        assert "pytorch_model.bin could not be read as a PyTorch checkpoint of tensors" in err, err
        assert "never loaded, as loading it could run code" in err and "save_file(" in err and "\x1b" not in err
    assert digests(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_pre_quantized_checkpoint_is_refused_naming_load_in_4bit(builtin_model, no_model_loading, tmp_path, capsys):
    model = model_with_config(builtin_model, tmp_path / "gptq",
                              quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128})
    before = digests(tmp_path)
    for command in ("plan", "train"):
        err = refused(capsys, command, "--model", model, "--output_dir", tmp_path / "run", "--max_steps", 2)
        assert "has a quantization_config (quant_method 'gptq'): pre-quantized checkpoints are not supported" in err
        assert "--load_in_4bit" in err, err
    assert digests(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_full_disk_under_metrics_jsonl_is_one_clear_error(small_disk):
    from loretta_ds.distributed.errors import RunFailure
    from loretta_ds.run.metrics import MetricsLog

    metrics = MetricsLog(small_disk / "run", enabled=True)
    metrics.log({"step": 1, "kind": "train", "loss": 1.0})
    try:  # fill the 1 MiB disk
        with (small_disk / "filler").open("wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError:
        pass
    with pytest.raises(RunFailure) as failure:
        for step in range(2, 200):
            metrics.log({"step": step, "kind": "train", "loss": 1.0, "note": "x" * 4096})
    message = str(failure.value)
    assert f"cannot write the metrics log {small_disk / 'run' / 'metrics.jsonl'}: No space left on device" in message
    assert "--resume auto" in message
    metrics.close()


# --- 8 and 11. the SLURM launcher: advice only where it applies; paths with spaces --------------------------


def test_the_launchers_nodes_advice_follows_only_a_batch_that_does_not_divide(tmp_path):
    from test_slurm_dryrun import assert_refused, run_bad, write_ds_config

    # A batch flag that contradicts the config: the job's node count has nothing to do with it.
    ds = write_ds_config(tmp_path / "ds.json", train_batch_size=16, train_micro_batch_size_per_gpu=1,
                         gradient_accumulation_steps=1)
    res, out_dir = run_bad(tmp_path, True, DS_CONFIG=str(ds), EXTRA_ARGS="--micro_batch_size 2")
    assert_refused(res, out_dir, "--micro_batch_size 2 contradicts train_micro_batch_size_per_gpu=1")
    assert "submit with another --nodes" not in res.stderr, res.stderr
    # Where the batch does not divide over the job's processes the advice still comes
    # (tests/test_slurm_dryrun.py: test_a_batch_that_does_not_fit_the_job_is_refused_by_the_trainers_rule).


def test_slurm_data_and_extra_args_carry_paths_with_spaces(tmp_path):
    import shlex

    from test_slurm_dryrun import parse_plan, run_bad, write_ds_config

    data = reviews(tmp_path / "my data" / "train set.jsonl", 8)
    template = tmp_path / "my templates" / "chat.jinja"
    template.parent.mkdir()
    template.write_text(TEMPLATE)
    ds = write_ds_config(tmp_path / "ds.json", train_batch_size=32, train_micro_batch_size_per_gpu="auto",
                         gradient_accumulation_steps=2)
    res, _ = run_bad(tmp_path, True, DS_CONFIG=str(ds), DATA=f'"{data}":0.7,bundled:sentiment:0.3',
                     EXTRA_ARGS=f"--chat_template '{template}' --seed 3")
    assert res.returncode == 0, res.stderr
    (_, command), *_ = parse_plan(res.stdout)["node_cmds"].values()
    words = shlex.split(command)
    start = words.index("--dataset")
    assert words[start + 1:start + 3] == [f"{data}:0.7", "bundled:sentiment:0.3"], words
    assert words[words.index("--chat_template") + 1] == str(template) and words[-2:] == ["--seed", "3"], words
    # An unclosed quote is one clear refusal naming the variable, not a split at the spaces.
    res, out_dir = run_bad(tmp_path, True, DS_CONFIG=str(ds), EXTRA_ARGS=f"--chat_template '{template}")
    assert res.returncode == 2 and "EXTRA_ARGS cannot be split into arguments (No closing quotation)" in res.stderr
    assert not out_dir.exists()


# --- 11. evaluation data of the user's choosing; metrics to W&B or MLflow ----------------------------------


def test_eval_dataset_and_eval_split_choose_the_held_out_examples(builtin_model, no_model_loading, tmp_path, capsys):
    data = reviews(tmp_path / "train.jsonl", 50)
    held = reviews(tmp_path / "held.jsonl", 12)
    base = ["--output_dir", tmp_path / "run", "--dataset", data, "--max_steps", 2, "--seq_len", 32]
    plan = plan_of([*base, "--eval_dataset", held])
    assert (len(plan.data.train), len(plan.data.eval)) == (50, 12)  # nothing held out of the training file
    assert plan.settings["eval_dataset"] == [str(held)]
    plan = plan_of([*base, "--eval_split", 10])
    assert (len(plan.data.train), len(plan.data.eval)) == (40, 10)  # the default 0.05 holds out 2
    config = tmp_path / "run.yaml"
    for value, fragment in (("1.5", "eval_split must be a fraction in (0, 1) (e.g. 0.1) or a count of records"),
                            ("50", "has 50 records: too few to hold out a validation split (50 records)")):
        config.write_text(f"eval_split: {value}\n")
        err = refused(capsys, "train", *base, "--config", config)
        assert fragment in err, err
    err = refused(capsys, "train", *base, "--eval_dataset", tmp_path / "missing.jsonl")
    assert "missing.jsonl' does not exist" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_report_to_a_tracker_that_is_not_installed_is_refused_with_the_install(tracker, builtin_model,
                                                                             no_model_loading, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    err = refused(capsys, "train", "--output_dir", tmp_path / "run", "--max_steps", 2, "--report_to", tracker)
    assert f"--report_to {tracker} needs the {tracker} package, which is not installed here" in err, err
    assert f"pip install {tracker}" in err and "--report_to none" in err
    assert not (tmp_path / "run").exists()


def test_report_to_wandb_sends_every_record_offline_into_the_run_directory(tmp_path, monkeypatch):
    """The wiring, with a stand-in for the wandb package (not a dependency; absent here): every
    record of metrics.jsonl reaches the tracker under its train/ or eval/ name, at its step."""
    import importlib.machinery
    import types

    from loretta_ds.run.metrics import MetricsLog

    calls = {"log": [], "finished": 0}

    class Run:
        def log(self, scalars, step):
            calls["log"].append((step, scalars))

        def finish(self):
            calls["finished"] += 1

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", loader=None)
    fake.init = init
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    metrics = MetricsLog(run, enabled=True, report_to="wandb", settings={"lr": 0.01})
    metrics.log({"step": 1, "kind": "train", "loss": 2.5, "lr": 0.01})
    metrics.log({"step": 2, "kind": "eval", "loss": 2.0, "accuracy": 0.75})
    metrics.close()
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(run)
    assert calls["init"]["config"] == {"lr": 0.01} and calls["init"]["resume"] == "allow"
    assert calls["log"] == [(1, {"train/loss": 2.5, "train/lr": 0.01}), (2, {"eval/loss": 2.0, "eval/accuracy": 0.75})]
    assert calls["finished"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # metrics.jsonl as ever


def test_report_to_mlflow_logs_into_a_file_store_in_the_run_directory(tmp_path, monkeypatch):
    """As above, with a stand-in for mlflow: the file store under OUTPUT_DIR/mlruns, the settings as
    parameters, every record's scalars at its step."""
    import importlib.machinery
    import types

    from loretta_ds.run.metrics import MetricsLog

    calls = {"metrics": [], "ended": 0}
    fake = types.ModuleType("mlflow")
    fake.__spec__ = importlib.machinery.ModuleSpec("mlflow", loader=None)
    fake.set_tracking_uri = lambda uri: calls.__setitem__("uri", uri)
    fake.set_experiment = lambda name: calls.__setitem__("experiment", name)
    fake.start_run = lambda run_name: calls.__setitem__("run_name", run_name)
    fake.log_params = lambda params: calls.__setitem__("params", params)
    fake.log_metrics = lambda metrics, step: calls["metrics"].append((step, metrics))
    fake.end_run = lambda: calls.__setitem__("ended", calls["ended"] + 1)
    monkeypatch.setitem(__import__("sys").modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    metrics = MetricsLog(run, enabled=True, report_to="mlflow", settings={"lr": 0.01, "dataset": ["a.jsonl"]})
    metrics.log({"step": 3, "kind": "eval", "loss": 2.0, "accuracy": 0.5})
    metrics.close()
    assert calls["uri"] == (run / "mlruns").resolve().as_uri() and calls["run_name"] == "run"
    assert calls["params"] == {"lr": "0.01", "dataset": "['a.jsonl']"}
    assert calls["metrics"] == [(3, {"eval_loss": 2.0, "eval_accuracy": 0.5})] and calls["ended"] == 1
