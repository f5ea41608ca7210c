"""Exact trainable-parameter counts on meta-device LLaMA-2 models (the reference implementation's counts)."""
import pytest

from loretta_ds import LorettaConfig, count_parameters, inject
from loretta_ds.models import load_model_config, meta_model

# (rep TT cores, adp TT cores + biases, norms) per model, from the reference implementation.
EXPECTED = {
    "llama2-7b": (102_400, 610_560, 266_240),
    "llama2-13b": (116_800, 877_680, 414_720),
    "llama2-70b": (348_800, 2_672_640, 1_318_912),
}
TOTAL_BASE = {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama2-70b": 68_976_648_192}


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("method", ["rep", "adp"])
@pytest.mark.parametrize("train_norms", [True, False])
def test_counts_match_reference_table(name, method, train_norms):
    model = meta_model(load_model_config(name))
    _, base_total = count_parameters(model)
    assert base_total == TOTAL_BASE[name]
    inject(model, LorettaConfig(method=method, train_norms=train_norms))
    trainable, total = count_parameters(model)
    rep, adp, norms = EXPECTED[name]
    adapter = rep if method == "rep" else adp
    assert trainable == adapter + (norms if train_norms else 0)
    assert total == base_total + adapter
    assert all(p.device.type == "meta" for p in model.parameters())


def count_report(capsys, *argv: str) -> dict[str, int]:
    """`loretta-ds count` run in this process; its figures by line label."""
    from loretta_ds.cli import main

    assert main(["count", *argv]) == 0
    figures = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        label, number = line.split("  (")[0].rsplit(None, 1)
        figures[label.strip()] = int(number.replace(",", ""))
    return figures


@pytest.mark.parametrize("train_norms", ["true", "false"])
def test_count_command_keeps_trained_norms_out_of_the_frozen_figure(capsys, train_norms):
    """Trained norm weights are trainable, not frozen: frozen + trainable = total, every figure exact."""
    figures = count_report(capsys, "--model", "llama2-70b", "--method", "rep", "--train_norms", train_norms)
    rep, _, norms = EXPECTED["llama2-70b"]
    norms = norms if train_norms == "true" else 0
    base = TOTAL_BASE["llama2-70b"]
    assert figures == {"adapter parameters": rep, "trained norm weights": norms, "trainable": rep + norms,
                       "frozen": base - norms, "total": base + rep}


def test_count_and_train_describe_the_loretta_flags_alike():
    """Each LoRETTA flag's help says what its values do: the presets with their modules, the inits."""
    import argparse

    from loretta_ds.commands.count import add_loretta_arguments
    from loretta_ds.run_config import add_train_arguments

    helps = []
    for add in (add_loretta_arguments, add_train_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        helps.append({a.dest: a.help for a in parser._actions})
    count_help, train_help = helps
    for flag in ("r", "tensor_rank", "alpha", "dropout", "bottleneck", "activation", "adapter_scaling",
                 "target_modules", "init", "train_norms", "tt_shapes"):
        assert count_help[flag] == train_help[flag]
        assert not train_help[flag].startswith("LoRETTA "), train_help[flag]
    assert "attn (q_proj,k_proj,v_proj,o_proj)" in train_help["target_modules"]
    assert "mlp (gate_proj,up_proj,down_proj)" in train_help["target_modules"]
    assert "all (attn + mlp)" in train_help["target_modules"]
    assert "rep and lora q_proj,v_proj" in train_help["target_modules"]
    assert "base model exactly" in train_help["init"] and "Gaussian" in train_help["init"]


def test_count_takes_what_train_takes_and_refuses_what_train_cannot_load(tmp_path, capsys):
    """One resolver: count accepts a model directory as train does (same figures as its config.json),
    and train refuses a preset or a bare config file (shapes, no weights) with the way that works."""
    from loretta_ds.models import resolve_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    load_model_config("llama2-7b").to_json_file(model_dir / "config.json")
    assert count_report(capsys, "--model", str(model_dir)) == count_report(capsys, "--model", "llama2-7b")
    assert resolve_model(str(model_dir / "config.json"), weights=False)[0] is None
    with pytest.raises(ValueError, match="is a preset: its shapes, no weights; pass the directory"):
        resolve_model("llama2-7b", weights=True)
    with pytest.raises(ValueError, match="is a config file; training needs the model directory"):
        resolve_model(str(model_dir / "config.json"), weights=True)
    with pytest.raises(FileNotFoundError, match="neither a preset .* nor a hub model available here"):
        resolve_model(str(tmp_path / "nowhere"), weights=False)
