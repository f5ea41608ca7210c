"""Checkpoints of every supported family, built here with the family's traits (tests/tiny_models.py
FAMILIES): LLaMA-2, LLaMA-3, Mistral, Qwen2 (q/k/v biases), SmolLM2 (tied embeddings, pad == eos);
byte-level BPE tokenizers, chat templates, GQA, sharded safetensors, generation_config.json, and a
bfloat16 checkpoint.

Each trains a few real optimizer steps on the bundled instruction task with rep and adp, is
exported (merged and PEFT LoRA for rep, the adapter for adp) and reloaded: rep's exports in a
fresh process with stock transformers and PEFT only (tests/stock_reload.py).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from loretta_ds import LorettaConfig, inject, load_adapter, save_adapter
from loretta_ds.adapters import trainable_parameter_names
from loretta_ds.data.batches import collate
from loretta_ds.data.prepare import prepare_data
from loretta_ds.data.tokenization import IGNORE_INDEX, pad_id_of, special_ids
from loretta_ds.export import export
from loretta_ds.models import SUPPORTED_MODEL_TYPES, check_model_type

from tiny_models import FAMILIES, family_config, save_family_checkpoint

STOCK_RELOAD = str(Path(__file__).with_name("stock_reload.py"))
# Float32 tiny models; the exports differ from base + adapter only by where the update is added.
LOGIT_ATOL = 1e-4
BF16_RELATIVE_TOLERANCE = 2e-2  # one rounding of the merged weight to bf16 (as tests/test_export.py)


def quiet(_message):
    pass


def train_a_few_steps(model, tokenizer, steps: int = 4, lr: float = 2e-2):
    """Real optimizer steps on the bundled instruction task; returns the losses."""
    data = prepare_data(tokenizer, "bundled:instruct", "auto", 64, 0)
    params = [p for n, p in model.named_parameters() if n in set(trainable_parameter_names(model))]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        rows = [data.train[i] for i in range(4 * step, 4 * step + 4)]
        batch = collate(rows, data.pad_id)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


def export_and_reload_stock(model, base_dir, tmp_path) -> tuple[dict, torch.Tensor]:
    """Export ``model``'s saved adapter (tmp_path/adapter) merged and as PEFT LoRA, reload both in a
    fresh process with stock transformers and PEFT only; returns what that process computed and
    ``model``'s own logits on the same prompt."""
    merged, peft_dir = tmp_path / "merged", tmp_path / "peft"
    export(adapter=tmp_path / "adapter", base=str(base_dir), out_dir=merged, format="merged", log=quiet)
    export(adapter=tmp_path / "adapter", base=str(base_dir), out_dir=peft_dir, format="peft-lora", log=quiet)
    result = subprocess.run([sys.executable, STOCK_RELOAD, str(base_dir), str(merged), str(peft_dir),
                             str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stock = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        return stock, model(input_ids=stock["input_ids"]).logits


@pytest.fixture(params=sorted(FAMILIES))
def family_dir(request, tmp_path):
    base = save_family_checkpoint(request.param, tmp_path / "base")
    return request.param, tmp_path / "base", base


def test_every_family_is_supported_and_others_are_refused():
    for family in FAMILIES:
        check_model_type(family_config(family))
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="gpt2.*" + ".*".join(SUPPORTED_MODEL_TYPES)):
        check_model_type(GPT2Config())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rep", "adp"])
def test_family_trains_exports_and_reloads(family_dir, method, tmp_path):
    family, base_dir, base = family_dir
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LorettaConfig(method=method, target_modules="all", init="reference" if method == "adp" else "zero")
    inject(model, cfg)
    targets = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "base_layer")}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    model, losses = train_a_few_steps(model, tokenizer)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    save_adapter(model, tmp_path / "adapter")
    ids = torch.tensor([tokenizer("the film was good and the actors were great")["input_ids"]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        reference = base(input_ids=ids).logits
    assert (adapted - reference).abs().max() > 100 * LOGIT_ATOL  # the steps changed the model

    if method == "adp":
        export(adapter=tmp_path / "adapter", base=str(base_dir), out_dir=tmp_path / "exported",
               format="adapter", log=quiet)
        reloaded = load_adapter(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                tmp_path / "exported").eval()
        with torch.no_grad():
            assert (reloaded(input_ids=ids).logits - adapted).abs().max() < LOGIT_ATOL
        return

    stock, ours = export_and_reload_stock(model, base_dir, tmp_path)
    assert (stock["merged"] - ours).abs().max() < LOGIT_ATOL
    assert (stock["peft"] - ours).abs().max() < LOGIT_ATOL
    assert (stock["base"] - ours).abs().max() > 100 * LOGIT_ATOL
    assert stock["merged_tied"] == FAMILIES[family]["tie"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_target_presets_name_the_same_projections_in_every_family(family, tmp_path):
    """`--target_modules attn | mlp | all` map onto each family's own module names."""
    save_family_checkpoint(family, tmp_path / "base")
    expected = {"attn": {"q_proj", "k_proj", "v_proj", "o_proj"}, "mlp": {"gate_proj", "up_proj", "down_proj"}}
    expected["all"] = expected["attn"] | expected["mlp"]
    layers = AutoModelForCausalLM.from_pretrained(tmp_path / "base").config.num_hidden_layers
    for preset, names in expected.items():
        model = inject(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LorettaConfig(target_modules=preset))
        adapted = [name for name, module in model.named_modules() if hasattr(module, "base_layer")]
        assert {name.rsplit(".", 1)[-1] for name in adapted} == names, preset
        assert len(adapted) == layers * len(names)


@pytest.mark.slow
def test_a_bfloat16_checkpoint_trains_in_float32_and_exports_in_its_own_dtype(tmp_path):
    """A bf16 checkpoint (`dtype: bfloat16` in config.json, bf16 shards), trained in float32 as the
    trainer loads it without --bf16: the merged export keeps bf16 (one rounding of W + dW), and
    stock transformers / PEFT reload both exports."""
    base_dir = tmp_path / "base"
    base = save_family_checkpoint("llama3", base_dir, dtype=torch.bfloat16)
    assert json.loads((base_dir / "config.json").read_text())["dtype"] == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = inject(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), LorettaConfig(target_modules="all"))
    model, losses = train_a_few_steps(model, tokenizer)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    save_adapter(model, tmp_path / "adapter")
    stock, ours = export_and_reload_stock(model, base_dir, tmp_path)
    merged = tmp_path / "merged"
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    for shard in merged.glob("model*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            assert {handle.get_slice(n).get_dtype() for n in handle.keys()} == {"BF16"}, shard.name
    scale = ours.abs().max()
    assert (stock["base"] - ours).abs().max() > 0.05 * scale  # the training changed the model
    assert (stock["peft"] - ours).abs().max() < LOGIT_ATOL  # bf16 base weights are exact in float32
    assert (stock["merged"] - ours).abs().max() < BF16_RELATIVE_TOLERANCE * scale


def test_qwen2_biases_are_copied_unchanged_beside_merged_weights(tmp_path):
    # (test_family_trains_exports_and_reloads[qwen2-rep] checks the logits, PEFT included.)
    base = save_family_checkpoint("qwen2", tmp_path / "base")
    frozen = {n: p.detach() for n, p in base.named_parameters()}
    biases = [n for n in frozen if n.endswith(".bias")]
    assert {n.rsplit(".", 2)[-2] for n in biases} == {"q_proj", "k_proj", "v_proj"}
    model = inject(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LorettaConfig(target_modules="attn"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "loretta_" in name:
                param.normal_(0, 0.3)
    save_adapter(model, tmp_path / "adapter")
    export(adapter=tmp_path / "adapter", base=str(tmp_path / "base"), out_dir=tmp_path / "merged", log=quiet)
    merged = {}
    for shard in (tmp_path / "merged").glob("model*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            merged.update({name: handle.get_tensor(name) for name in handle.keys()})
    assert set(biases) <= set(merged)
    for name in biases:
        assert torch.equal(merged[name], frozen[name])
        weight = name.replace(".bias", ".weight")
        assert not torch.allclose(merged[weight], frozen[weight])  # the update went into the weight


def test_tied_embeddings_stay_one_tensor_and_tokenizer_files_are_copied_byte_for_byte(tmp_path):
    base = save_family_checkpoint("smollm2", tmp_path / "base", shard=None)
    model = inject(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LorettaConfig(target_modules="all"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "loretta_" in name:
                param.normal_(0, 0.3)
    save_adapter(model, tmp_path / "adapter")
    out = tmp_path / "merged"
    export(adapter=tmp_path / "adapter", base=str(tmp_path / "base"), out_dir=out, log=quiet)
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    for path in (tmp_path / "base").iterdir():
        if path.name.startswith(("tokenizer", "chat_template", "generation_config")):
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[5, 17, 200, 33, 9]])
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() < LOGIT_ATOL
        assert (reloaded(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 100 * LOGIT_ATOL


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bos_only_where_the_tokenizer_adds_it_and_eos_ends_every_completion(family, tmp_path):
    save_family_checkpoint(family, tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    bos, eos = special_ids(tokenizer)
    assert (bos is not None) == FAMILIES[family]["add_bos"]
    data = prepare_data(tokenizer, "bundled:instruct", "auto", 128, 0)
    rows = [data.train[i] for i in range(4)]
    batch = collate(rows, pad_id_of(tokenizer))
    for row, example in zip(range(4), rows):
        length = len(example["input_ids"])
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        # The completion's last trained label is eos, even where eos is also the pad id.
        assert labels[length - 1].item() == eos and ids[length - 1].item() == eos
        assert (labels[length:] == IGNORE_INDEX).all() and (batch["attention_mask"][row, length:] == 0).all()
        assert (ids[0].item() == tokenizer.bos_token_id) == FAMILIES[family]["add_bos"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("family,method", [("qwen2", "rep"), ("mistral", "adp")])
def test_family_trains_under_two_process_zero3_offload(family, method, tmp_path):
    """The real trainer: 2 processes, ZeRO-3 with CPU offload, then the run's own exports."""
    from test_multiprocess_training import TRAIN, ZERO3_OFFLOAD, check, free_port, run

    base = save_family_checkpoint(family, tmp_path / "base")
    out = tmp_path / "run"
    check(run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN, "--ds_config", ZERO3_OFFLOAD,
               "--model", str(tmp_path / "base"), "--method", method, "--target_modules", "all",
               "--dataset", "bundled:instruct", "--max_steps", "4", "--lr", "2e-2", "--micro_batch_size", "2",
               "--seq_len", "64", "--eval_batches", "1", "--save_every", "0", "--output_dir", str(out)],
              threads=1, timeout=600))
    model = load_adapter(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), out / "adapter").eval()
    ids = torch.tensor([[5, 17, 200, 33, 9, 41]])
    with torch.no_grad():
        adapted, reference = model(input_ids=ids).logits, base(input_ids=ids).logits
    assert (adapted - reference).abs().max() > 100 * LOGIT_ATOL
    if method == "rep":  # the run's merged export, reloaded as a plain model
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
        with torch.no_grad():
            assert (merged(input_ids=ids).logits - adapted).abs().max() < LOGIT_ATOL
    else:
        assert not (out / "merged").exists()


def test_a_tied_lm_head_cannot_be_a_target(tmp_path):
    save_family_checkpoint("smollm2", tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="lm_head shares its weight with the input embeddings.*remove lm_head"):
        inject(model, LorettaConfig(target_modules="q_proj,lm_head"))
    assert not any("loretta_" in name for name, _ in model.named_parameters())  # nothing changed
    untied = save_family_checkpoint("llama2", tmp_path / "untied")
    inject(untied, LorettaConfig(target_modules="q_proj,lm_head"))  # an untied lm_head is an ordinary target


@pytest.mark.slow
def test_an_unsupported_model_type_is_a_user_error_before_anything_loads(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    result = subprocess.run([sys.executable, "-m", "loretta_ds.cli", "train", "--model", str(tmp_path / "gpt2"),
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model type 'gpt2' is not supported; supported model types: llama, mistral, qwen2" in result.stderr
    assert not (tmp_path / "out").exists()
