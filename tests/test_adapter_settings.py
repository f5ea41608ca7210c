"""Every adapter setting reaches the adapter, from the command line and from YAML (`adapter:` block or
top-level keys): tt_shapes, activation and adapter_scaling included, end to end through a real run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loretta_ds.adapters import read_adapter_tensors
from loretta_ds.adapters.config import AdapterSettings
from loretta_ds.run_config import config_from_args
from loretta_ds.tt import modes_for, tt_numel
from reliability_support import clean_env

REPO = Path(__file__).resolve().parents[1]
# tiny-llama: hidden 128, intermediate 344. adp's gate_proj "down" factor is 128 x bottleneck.
BOTTLENECK = 8
DOWN_MODES = [32, 32]  # 128 * 8 = 1024; the automatic choice is modes_for(128, 8) = [16, 8, 8]
YAML = f"""
method: adp
max_steps: 2
adapter:
  bottleneck: {BOTTLENECK}
  activation: gelu
  adapter_scaling: 0.5
  tt_shapes:
    gate_proj.down: {DOWN_MODES}
tensor_rank: 3
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loretta_ds.cli", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=600)


def test_yaml_block_top_level_keys_and_flags_layer_in_that_order(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(YAML)
    cfg = config_from_args({"config": str(config), "activation": "tanh"})  # a flag over the YAML's
    assert cfg.method == "adp" and cfg.max_steps == 2
    assert cfg.adapter == AdapterSettings(bottleneck=BOTTLENECK, activation="tanh", adapter_scaling=0.5,
                                          tensor_rank=3, tt_shapes={"gate_proj.down": DOWN_MODES})
    # The flag's form of tt_shapes (words KEY=M1xM2x...) means the same as the YAML mapping.
    flags = config_from_args({"tt_shapes": ["gate_proj.down=32x32", "128x8=16x8x8"]})
    assert flags.adapter.tt_shapes == {"gate_proj.down": DOWN_MODES, "128x8": [16, 8, 8]}


@pytest.mark.parametrize("yaml_text, message", [
    ("adapter:\n  bottleneck: 8\nbottleneck: 4\n", "bottleneck given both at the top level and in the adapter: block"),
    ("adapter:\n  learning_rate: 1\n", r"unknown adapter setting\(s\) \['learning_rate'\]"),
    ("adapter: 5\n", "adapter: in the run config must be a mapping"),
    ("activation: swish\n", "unknown activation 'swish'"),
    ("tt_shapes: {q_proj.A: [0, 4]}\n", "modes must be a list of integers >= 1"),
])
def test_bad_adapter_settings_name_the_key(tmp_path, yaml_text, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        config_from_args({"config": str(config)})


def test_tt_shapes_flag_that_does_not_fit_is_refused_before_anything_loads(tmp_path):
    done = cli("plan", "--tt_shapes", "q_proj.A=4x4x4", "--output_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "q_proj factor A: TT modes [4, 4, 4] multiply to 64" in done.stderr
    bad_word = cli("plan", "--tt_shapes", "q_proj.A", "--output_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert bad_word.returncode == 2 and "is not KEY=M1xM2x..." in bad_word.stderr
    assert not (tmp_path / "run").exists()


def test_plan_and_count_take_the_adapter_flags(tmp_path):
    planned = cli("plan", "--method", "adp", "--bottleneck", str(BOTTLENECK), "--tensor_rank", "3",
                  "--tt_shapes", "gate_proj.down=32x32", "--json", "--output_dir", str(tmp_path / "run"),
                  cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    summary = json.loads(planned.stdout)
    counted = cli("count", "--model", "tiny-llama", "--method", "adp", "--bottleneck", str(BOTTLENECK),
                  "--tensor_rank", "3", "--tt_shapes", "gate_proj.down=32x32", cwd=tmp_path)
    assert counted.returncode == 0, counted.stderr
    trainable = int(re.search(r"^  trainable\s+([\d,]+)", counted.stdout, re.M).group(1).replace(",", ""))
    assert summary["trainable_params"] == trainable
    default = cli("count", "--model", "tiny-llama", "--method", "adp", "--bottleneck", str(BOTTLENECK),
                  "--tensor_rank", "3", cwd=tmp_path)
    default_trainable = int(re.search(r"^  trainable\s+([\d,]+)", default.stdout, re.M).group(1).replace(",", ""))
    layers = 2  # the override replaces gate_proj's down factor in each layer
    change = layers * (tt_numel(DOWN_MODES, 3) - tt_numel(modes_for(128, BOTTLENECK), 3))
    assert trainable - default_trainable == change != 0


def test_an_adapter_as_large_as_the_model_or_a_rank_beyond_the_width_is_warned_about(tmp_path):
    """Valid but almost certainly a typo: `plan` (and the run, which prints the same plan) warns,
    naming the knob; the default adapter draws no warning."""
    def warnings(*flags: str) -> list[str]:
        done = cli("plan", *flags, "--json", "--output_dir", str(tmp_path / "run"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["warnings"]

    assert warnings("--method", "rep") == []
    huge = warnings("--method", "rep", "--r", "128", "--tensor_rank", "64")
    assert len(huge) == 1 and "of the model's parameters are trainable" in huge[0] and "lower --tensor_rank" in huge[0]
    wide = warnings("--method", "lora", "--r", "4096")
    assert any("--r 4096 is above the model's hidden size 128" in w and "use --r 128 or less" in w for w in wide), wide
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # one short single-process training run
def test_a_run_from_yaml_trains_the_adapter_it_describes(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(YAML)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config", str(config),
                           "--eval_every", "0", "--eval_batches", "1", "--save_every", "0", "--output_dir", str(out)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recorded = json.loads((out / "adapter" / "adapter_config.json").read_text())["loretta"]
    assert (recorded["method"], recorded["bottleneck"], recorded["activation"], recorded["adapter_scaling"],
            recorded["tensor_rank"], recorded["tt_shapes"]) == ("adp", BOTTLENECK, "gelu", 0.5, 3,
                                                                {"gate_proj.down": DOWN_MODES})
    train = json.loads((out / "run_config.json").read_text())["train"]
    assert (train["activation"], train["adapter_scaling"], train["tt_shapes"]) == ("gelu", 0.5,
                                                                                   {"gate_proj.down": DOWN_MODES})
    # The stored TT matrices have the requested modes: the overridden factor's size is that of
    # [32, 32] at rank 3, the others' that of the automatic choice.
    tensors = read_adapter_tensors(out / "adapter")
    down = tensors["model.layers.0.mlp.gate_proj.loretta_down.tt_cores"]
    up = tensors["model.layers.0.mlp.gate_proj.loretta_up.tt_cores"]
    assert down.numel() == tt_numel(DOWN_MODES, 3) != tt_numel(modes_for(128, BOTTLENECK), 3)
    assert up.numel() == tt_numel(modes_for(BOTTLENECK, 128), 3)
