"""Errors a user can cause: each is one clear message before any model loads, and nothing is written.

These run `loretta-ds train` in-process: validation happens before the process group starts,
so no DeepSpeed process is launched. The cases documented in docs/bad_input.md (a missing or
malformed dataset, a malformed ds_config, seq_len over the model's maximum, an output directory
holding another run, bad LoRA settings ...) are tested once, as real command lines, by
tests/test_reliability_bad_input.py; this file holds the rest and the config layer's own rules.
"""
import json
from pathlib import Path

import pytest

from loretta_ds.cli import main
from loretta_ds.run_config import config_from_args

ROOT = Path(__file__).resolve().parents[1]


# Every case needs the built-in model on disk, and any attempt to load weights fails it (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("builtin_model", "no_model_loading")


def train(tmp_path, capsys, *args) -> tuple[int, str]:
    out = tmp_path / "run"
    status = main(["train", "--output_dir", str(out), *args])
    err = capsys.readouterr().err
    return status, err


def assert_user_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_empty_dataset(tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    status, err = train(tmp_path, capsys, "--dataset", str(data))
    assert_user_error(status, err, "empty.jsonl", "empty")
    assert not (tmp_path / "run").exists()


def test_unknown_format_from_a_run_config(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("format: tabular\n")
    status, err = train(tmp_path, capsys, "--config", str(config))
    assert_user_error(status, err, "unknown format 'tabular'")
    # As a flag, argparse refuses it the same way (exit 2, the choices listed).
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--format", "tabular"])
    assert exit_info.value.code == 2


def test_label_not_in_label_set(tmp_path, capsys):
    folder = tmp_path / "task"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [json.dumps({"text": f"review {i}", "label": ["pos", "neg"][i % 2]})
                                         for i in range(40)])
    write_lines(folder / "validation.jsonl", [json.dumps({"text": "meh", "label": "neutral"})])
    status, err = train(tmp_path, capsys, "--dataset", str(folder))
    assert_user_error(status, err, "neutral")
    assert not (tmp_path / "run").exists()


def test_ds_config_without_an_optimizer(tmp_path, capsys):
    no_optimizer = tmp_path / "ds2.json"
    no_optimizer.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    status, err = train(tmp_path, capsys, "--ds_config", str(no_optimizer))
    assert_user_error(status, err, "no 'optimizer' section")
    assert not (tmp_path / "run").exists()


def test_batch_that_does_not_fit_the_world_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    config = json.loads((ROOT / "ds_configs" / "zero3_offload.json").read_text())
    config["train_batch_size"] = 6
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    status, err = train(tmp_path, capsys, "--ds_config", str(path), "--micro_batch_size", "1")
    assert_user_error(status, err, "train_batch_size=6", "4 process")


def test_flash_attention_without_flash_attn(tmp_path, capsys):
    status, err = train(tmp_path, capsys, "--attn", "flash_attention_2")
    assert_user_error(status, err, "flash_attention_2", "flash-attn")
    assert not (tmp_path / "run").exists()


def test_resume_none_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-5").mkdir(parents=True)
    (out / "checkpoints" / "step-5" / "trainable.safetensors").write_bytes(b"the earlier run's")
    before = sorted((str(p.relative_to(out)), p.stat().st_mtime_ns) for p in out.rglob("*"))
    status, err = train(tmp_path, capsys, "--resume", "none")
    assert_user_error(status, err, "--resume none would overwrite it")
    # Refused before anything was written: no lock file, no run config, the checkpoint untouched.
    assert sorted((str(p.relative_to(out)), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_resume_from_a_missing_or_torn_checkpoint(tmp_path, capsys):
    status, err = train(tmp_path, capsys, "--resume", str(tmp_path / "nowhere"))
    assert_user_error(status, err, "no such checkpoint directory")
    torn = tmp_path / "step-3"
    torn.mkdir()
    status, err = train(tmp_path, capsys, "--resume", str(torn))
    assert_user_error(status, err, "is not a checkpoint", "COMPLETE")
    (torn / "trainable.safetensors").write_bytes(b"cut short")
    status, err = train(tmp_path, capsys, "--resume", str(torn))
    assert_user_error(status, err, "not a complete checkpoint", "COMPLETE")


def test_resume_from_another_runs_checkpoint(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from loretta_ds.distributed.checkpoint import write_marker

    foreign = tmp_path / "other" / "checkpoints" / "step-4"
    foreign.mkdir(parents=True)
    save_file({"model.layers.0.self_attn.q_proj.loretta_A.tt_cores": torch.zeros(6)},
              str(foreign / "trainable.safetensors"))
    (foreign / "trainer_state.json").write_text(json.dumps({"step": 4}))
    write_marker(foreign, 4)
    status, err = train(tmp_path, capsys, "--resume", str(foreign))
    assert_user_error(status, err, str(foreign), "does not fit this run's trainable parameters", "adapter config")
    assert not (tmp_path / "run").exists()


def test_unknown_target_module_is_reported_before_loading(tmp_path, capsys):
    status, err = train(tmp_path, capsys, "--target_modules", "qkv_proj")
    assert_user_error(status, err, "qkv_proj", "matches no linear layer")


def test_yaml_run_config_is_overridden_by_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 0.05\nmax_steps: 30\nmethod: adp\nbottleneck: 16\ntrain_norms: false\n")
    cfg = config_from_args({"config": str(config), "max_steps": 12})
    assert (cfg.lr, cfg.max_steps, cfg.method) == (0.05, 12, "adp")
    assert (cfg.adapter.bottleneck, cfg.adapter.train_norms) == (16, False)
    config.write_text("learning_rate: 0.05\n")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        config_from_args({"config": str(config)})


def test_yaml_values_mean_what_the_user_wrote(tmp_path):
    """PyYAML reads `lr: 1e-3` as text and `max_steps: 1e3` as a float: both are the numbers meant."""
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-3\nmax_steps: 1e3\nwarmup_steps: '10'\ntarget_modules: [q_proj, v_proj]\n")
    cfg = config_from_args({"config": str(config)})
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.max_steps == 1000 and isinstance(cfg.max_steps, int)
    assert cfg.warmup_steps == 10
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("settings, message", [
    ({"max_steps": 2.5}, "max_steps must be a whole number, got 2.5"),
    ({"seed": True}, "seed must be a number, got True"),
    ({"dataset": [5]}, "dataset must be file names or dataset names"),
    ({"alpha": 0}, "alpha must be a number > 0"),
    ({"dropout": float("nan")}, "dropout must be a finite number"),
    ({"grad_clip": float("inf")}, "grad_clip must be a finite number"),
])
def test_values_of_the_wrong_kind_name_their_key(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config_from_args(settings)
