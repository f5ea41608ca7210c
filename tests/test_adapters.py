"""LoRETTA layers on tiny LLaMAs: init, training, any size, merge, save/load, PEFT export, errors."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from loretta_ds import (LorettaConfig, count_parameters, export_peft_lora, inject, load_adapter,
                        merge, merge_and_unload, save_adapter, unmerge)
from loretta_ds.adapters import LorettaAdpLinear, LorettaRepLinear, read_adapter_tensors, trainable_parameter_names
from loretta_ds.tt import TTFactorMatrix, split_cores

from tiny_models import randomize_adapter, tiny_llama


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def cores_with_gradient(model) -> set[str]:
    """"<TT matrix>.core<k>" for every core whose slice of the flat gradient is not all zero."""
    found = set()
    for name, module in model.named_modules():
        if isinstance(module, TTFactorMatrix) and module.tt_cores.grad is not None:
            for k, grad in enumerate(split_cores(module.tt_cores.grad, module.core_shapes)):
                if grad.abs().sum() > 0:
                    found.add(f"{name}.core{k}")
    return found


# ---------------------------------------------------------------- init and training

@pytest.mark.parametrize("method", ["rep", "adp"])
def test_zero_init_is_exact_and_every_core_learns_within_two_steps(method, token_ids):
    base = tiny_llama()
    model = inject(copy.deepcopy(base), LorettaConfig(method=method, target_modules="all"))
    assert torch.equal(logits(model, token_ids), logits(base, token_ids))

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    got_grad = set()
    for _ in range(2):
        loss = model(input_ids=token_ids, labels=token_ids).loss
        loss.backward()
        got_grad |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        got_grad |= cores_with_gradient(model)
        optimizer.step()
        optimizer.zero_grad()
    adapter_params = {n for n in trainable_parameter_names(model) if "loretta_" in n}
    every_core = {f"{name}.core{k}" for name, m in model.named_modules() if isinstance(m, TTFactorMatrix)
                  for k in range(len(m.core_shapes))}
    assert adapter_params and adapter_params <= got_grad and every_core <= got_grad
    assert not torch.equal(logits(model.eval(), token_ids), logits(base, token_ids))


def test_trainable_set_is_adapter_plus_norms():
    model = inject(tiny_llama(), LorettaConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(trainable_parameter_names(model))
    assert any("input_layernorm" in n for n in trainable) and "model.norm.weight" in trainable
    assert all("loretta_" in n or "norm" in n for n in trainable)
    frozen = inject(tiny_llama(), LorettaConfig(train_norms=False))
    assert all("loretta_" in n for n, p in frozen.named_parameters() if p.requires_grad)


def test_any_size_rep_on_all_projections_trains_one_step(token_ids):
    # intermediate 172 = 4 * 43, like 11008 = 2^8 * 43.
    model = inject(tiny_llama(intermediate=172), LorettaConfig(target_modules="all", init="reference"))
    layers = [m for m in model.modules() if isinstance(m, LorettaRepLinear)]
    assert len(layers) == 2 * 7
    for layer in layers:
        for tt in (layer.loretta_A, layer.loretta_B):
            prod = 1
            for n in tt.modes:
                prod *= n
            assert prod == tt.d_in * tt.d_out
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=token_ids, labels=token_ids).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}


def test_tt_shape_override_by_module_and_by_size():
    cfg = LorettaConfig(tt_shapes={"q_proj.A": [4, 4, 4, 8], "8x64": [8, 8, 8]})
    model = inject(tiny_llama(), cfg)
    q = model.model.layers[0].self_attn.q_proj
    v = model.model.layers[1].self_attn.v_proj
    assert q.loretta_A.modes == [4, 4, 4, 8]
    assert q.loretta_B.modes == [8, 8, 8] and v.loretta_B.modes == [8, 8, 8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapter_follows_base_dtype(dtype, token_ids):
    model = inject(tiny_llama(dtype=dtype), LorettaConfig(init="reference"))
    assert all(p.dtype == dtype for n, p in model.named_parameters() if "loretta_" in n)
    assert logits(model, token_ids).dtype == dtype


# ---------------------------------------------------------------- merge

def test_merge_unmerge_and_unload(token_ids):
    base = tiny_llama()
    model = inject(copy.deepcopy(base), LorettaConfig(target_modules="all"))
    randomize_adapter(model, scale=0.3)
    adapted = logits(model, token_ids)
    assert (adapted - logits(base, token_ids)).abs().max() > 1e-3  # non-zero adapter changes output
    q_weight = model.model.layers[0].self_attn.q_proj.base_layer.weight
    original = q_weight.detach().clone()

    merge(model)
    assert (logits(model, token_ids) - adapted).abs().max() <= 1e-5
    assert not torch.allclose(q_weight, original)
    unmerge(model)
    assert torch.allclose(q_weight, original, atol=1e-6)
    assert (logits(model, token_ids) - adapted).abs().max() <= 1e-5

    plain = merge_and_unload(model)
    assert not any(isinstance(m, (LorettaRepLinear, LorettaAdpLinear)) for m in plain.modules())
    assert not any("loretta_" in n for n, _ in plain.named_parameters())
    assert (logits(plain, token_ids) - adapted).abs().max() <= 1e-5


def test_merged_model_saves_and_loads_as_plain_llama(tmp_path, token_ids):
    model = inject(tiny_llama(), LorettaConfig())
    randomize_adapter(model, scale=0.3)
    adapted = logits(model, token_ids)
    merge_and_unload(model).save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert (logits(reloaded, token_ids) - adapted).abs().max() <= 1e-5


def test_adp_cannot_merge_and_model_is_untouched(token_ids):
    model = inject(tiny_llama(), LorettaConfig(method="adp"))
    randomize_adapter(model)
    before = logits(model, token_ids)
    for fn in (merge, merge_and_unload):
        with pytest.raises(ValueError, match="nonlinear"):
            fn(model)
    assert torch.equal(logits(model, token_ids), before)
    assert isinstance(model.model.layers[0].mlp.down_proj, LorettaAdpLinear)


# ---------------------------------------------------------------- save / load

@pytest.mark.parametrize("method", ["rep", "adp"])
def test_save_load_round_trip(method, tmp_path, token_ids):
    model = inject(tiny_llama(), LorettaConfig(method=method, tensor_rank=3))
    randomize_adapter(model)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # trained norms must travel with the adapter
    expected = logits(model, token_ids)
    save_adapter(model, tmp_path)
    saved = load_file(tmp_path / "adapter.safetensors")
    assert set(saved) == set(trainable_parameter_names(model))

    fresh = load_adapter(tiny_llama(), tmp_path)
    assert (logits(fresh, token_ids) - expected).abs().max() == 0
    assert fresh.loretta_config == model.loretta_config


def test_format_1_adapter_with_one_tensor_per_core_still_loads(tmp_path, token_ids):
    """Adapters saved before the cores moved into one tensor per TT matrix (``.cores.<k>`` keys)
    load to the same model, and export reads them the same way."""
    model = inject(tiny_llama(), LorettaConfig(tensor_rank=3))
    randomize_adapter(model)
    expected = logits(model, token_ids)
    save_adapter(model, tmp_path)
    per_core = {name: tensor for name, tensor in load_file(tmp_path / "adapter.safetensors").items()
                if "loretta_" not in name}
    for name, module in model.named_modules():
        if isinstance(module, TTFactorMatrix):
            per_core.update({f"{name}.cores.{k}": core.detach().clone() for k, core in enumerate(module.cores())})
    save_file(per_core, tmp_path / "adapter.safetensors")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    del config["weights_sha256"]  # format 1 recorded no checksum
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert set(read_adapter_tensors(tmp_path)) == set(trainable_parameter_names(model))
    assert (logits(load_adapter(tiny_llama(), tmp_path), token_ids) - expected).abs().max() == 0

    del per_core["model.layers.0.self_attn.q_proj.loretta_A.cores.1"]
    save_file(per_core, tmp_path / "adapter.safetensors")
    with pytest.raises(ValueError, match=r"q_proj.loretta_A has cores \[0, 2\], not 0..1"):
        read_adapter_tensors(tmp_path)


def test_adapter_file_size_independent_of_frozen_weights(tmp_path):
    sizes = []
    for vocab in (128, 4096):  # a 30x larger embedding and head
        model = inject(tiny_llama(vocab=vocab), LorettaConfig())
        save_adapter(model, tmp_path / str(vocab))
        sizes.append((tmp_path / str(vocab) / "adapter.safetensors").stat().st_size)
    assert sizes[0] == sizes[1]


def test_load_refuses_wrong_base_and_leaves_it_untouched(tmp_path, token_ids):
    model = inject(tiny_llama(), LorettaConfig())
    save_adapter(model, tmp_path)
    for other in (tiny_llama(hidden=96, heads=4), tiny_llama(layers=3)):
        before = logits(other, token_ids)
        with pytest.raises(ValueError, match="different base model"):
            load_adapter(other, tmp_path)
        assert not any(isinstance(m, LorettaRepLinear) for m in other.modules())
        assert torch.equal(logits(other, token_ids), before)


def test_load_refuses_mismatched_config(tmp_path):
    model = inject(tiny_llama(), LorettaConfig(r=4))
    save_adapter(model, tmp_path)
    other = inject(tiny_llama(), LorettaConfig(r=8))
    with pytest.raises(ValueError, match="r: model 8 vs adapter 4"):
        load_adapter(other, tmp_path)


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = LorettaConfig(method="adp", bottleneck=32, target_modules="mlp", tt_shapes={"64x32": [8, 8, 32]})
    cfg.save(tmp_path / "c.json")
    assert LorettaConfig.load(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["target_modules"] == ["gate_proj", "up_proj", "down_proj"]
    with pytest.raises(ValueError, match="unknown LoRETTA config keys"):
        LorettaConfig.from_dict({"rank": 4})


# ---------------------------------------------------------------- PEFT LoRA export

def test_peft_lora_export_matches_logits(tmp_path, token_ids):
    peft = pytest.importorskip("peft")
    model = inject(tiny_llama(), LorettaConfig(target_modules="all"))
    randomize_adapter(model, scale=0.3)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight.mul_(0.7)
    expected = logits(model, token_ids)
    export_peft_lora(model, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert (logits(peft_model, token_ids) - expected).abs().max() <= 1e-5
    assert (logits(peft_model, token_ids) - logits(tiny_llama(), token_ids)).abs().max() > 1e-3


def test_peft_export_refuses_adp(tmp_path):
    model = inject(tiny_llama(), LorettaConfig(method="adp"))
    with pytest.raises(ValueError, match="nonlinear"):
        export_peft_lora(model, tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r must be an integer >= 1"),
    ({"tensor_rank": 0}, "tensor_rank must be an integer >= 1"),
    ({"method": "lora"}, "unknown method"),
    ({"init": "gauss"}, "unknown init"),
    ({"dropout": 1.5}, "dropout"),
    ({"tt_shapes": {"q_proj.A": [0, 4]}}, "modes must be a list of integers >= 1"),
])
def test_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LorettaConfig(**kwargs)


@pytest.mark.parametrize("cfg, message", [
    (LorettaConfig(target_modules=["qkv_proj"]), "linear layers are named: down_proj, gate_proj, k_proj, lm_head"),
    (LorettaConfig(tt_shapes={"q_proj.A": [4, 4, 4]}), "multiply to 64"),
    (LorettaConfig(tt_shapes={"nothing.A": [4, 4]}), "match no adapted factor"),
])
def test_injection_errors_leave_model_untouched(cfg, message, token_ids):
    model = tiny_llama()
    before = logits(model, token_ids)
    with pytest.raises(ValueError, match=message):
        inject(model, cfg)
    assert not any(isinstance(m, LorettaRepLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(logits(model, token_ids), before)


def test_double_injection_refused():
    model = inject(tiny_llama(), LorettaConfig())
    with pytest.raises(ValueError, match="already has LoRETTA layers"):
        inject(model, LorettaConfig())


def test_count_parameters_small_model():
    model = tiny_llama(layers=1)
    _, total = count_parameters(model)
    inject(model, LorettaConfig(train_norms=False, tensor_rank=2, r=4))
    trainable, total_after = count_parameters(model)
    expected = sum(p.numel() for n, p in model.named_parameters() if "loretta_" in n)
    assert trainable == expected > 0 and total_after == total + expected
