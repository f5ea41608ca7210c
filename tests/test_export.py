"""Export on tiny LLaMAs: merged checkpoints (fresh process, plain transformers), .bin bases,
PEFT LoRA, the adapter format, --verify, and every user error (raised before anything is written)."""
import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loretta_ds import LorettaConfig, export_peft_lora, inject, load_adapter, save_adapter
from loretta_ds.export import TEMP_SUFFIX, export, export_adapter, export_lora, export_merged, export_run_merged
from loretta_ds.export.verify import verify_export
from loretta_ds.tt import tt_to_dense

from tiny_models import randomize_adapter, tiny_llama

REPO = Path(__file__).resolve().parents[1]
TOKENS = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(7))
# bfloat16 keeps 8 significant bits, and the adapted model (base(x) + s (x A) B) and the merged one
# (round(W + Delta) x) round at different places. Over 18 random tiny LLaMAs with realistic
# updates (|Delta W| / |W| from 0.01 to 2) their logits differed by at most 1.0% of the largest
# logit (and each differed from the float32 model by ~0.6%, as much as each other): 2% keeps a 2x
# margin while a wrong export (missing norm, transposed update) moves logits by 20-60%.
BF16_RELATIVE_TOLERANCE = 2e-2


def logits(model, ids=TOKENS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def quiet(_message):
    pass


def add_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over the tiny vocabulary, saved like any HF tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, 128)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(directory)


def to_bin_shards(src: Path, dst: Path, legacy: bool = False) -> Path:
    """Rewrite a sharded safetensors checkpoint as pytorch_model-*.bin shards + their index."""
    dst.mkdir(parents=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        name = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        state = load_file(src / shard)
        torch.save(state, dst / name, _use_new_zipfile_serialization=not legacy)
        weight_map.update({key: name for key in state})
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for extra in ("config.json", "generation_config.json"):
        (dst / extra).write_bytes((src / extra).read_bytes())
    return dst


def make_base(directory: Path, dtype=torch.float32, shard="40KB", seed=0, **kwargs):
    """A tiny LLaMA saved with save_pretrained (sharded unless shard is None), plus a tokenizer."""
    model = tiny_llama(seed=seed, dtype=dtype, **kwargs)
    model.save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
    add_tokenizer(directory)
    return model


def make_run(run_dir: Path, base_dir: Path, base_model, scale=0.3, seed=1, **cfg_kwargs):
    """What training leaves in OUTPUT_DIR: run_config.json + adapter/ with non-zero adapter values
    and trained (changed) norms. Returns the adapted model."""
    cfg = LorettaConfig(**{"target_modules": "all", **cfg_kwargs})
    model = inject(copy.deepcopy(base_model), cfg)
    randomize_adapter(model, seed=seed, scale=scale)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.3)
        model.model.layers[0].input_layernorm.weight.mul_(0.8)
    save_adapter(model, run_dir / "adapter")
    dtype = str(next(base_model.parameters()).dtype).removeprefix("torch.")
    (run_dir / "run_config.json").write_text(json.dumps(
        {"model": str(base_dir), "method": cfg.method, "loretta": cfg.to_dict(), "dtype": dtype}))
    return model


@pytest.fixture
def fp32_run(tmp_path):
    base = make_base(tmp_path / "base")
    adapted = make_run(tmp_path / "run", tmp_path / "base", base)
    return tmp_path / "run", tmp_path / "base", base, adapted


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not Path(str(out) + TEMP_SUFFIX).exists()


# ---------------------------------------------------------------- merged

FRESH_PROCESS = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ids = torch.load(sys.argv[1])
    out = {}
    for directory in sys.argv[3:]:
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        with torch.no_grad():
            out[directory] = model(input_ids=ids).logits.float()
        assert AutoTokenizer.from_pretrained(directory)("w1 w2 w3").input_ids == [1, 2, 3]
        out[directory + ":dtype"] = str(model.dtype)
    assert not any(name.startswith("loretta_ds") for name in sys.modules)
    torch.save(out, sys.argv[2])
""")


def load_in_fresh_process(tmp_path: Path, directories: list[Path]) -> dict:
    """Logits of each exported dir, computed by a process that imports only torch + transformers."""
    torch.save(TOKENS, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "ids.pt"), str(tmp_path / "out.pt"),
                    *map(str, directories)], check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    return torch.load(tmp_path / "out.pt")


def test_merged_exports_load_in_a_fresh_process_and_match_the_adapted_model(tmp_path):
    fp32_base = make_base(tmp_path / "base32")                      # sharded safetensors
    single_base = make_base(tmp_path / "single", shard=None, seed=3)  # one model.safetensors
    bf16_base = make_base(tmp_path / "base16", dtype=torch.bfloat16, seed=2)
    fp32 = make_run(tmp_path / "run32", tmp_path / "base32", fp32_base)
    single = make_run(tmp_path / "runs", tmp_path / "single", single_base)
    # A realistic update size for the rounding comparison (|Delta W| ~ 0.1-1 x |W|).
    bf16 = make_run(tmp_path / "run16", tmp_path / "base16", bf16_base, scale=0.15)
    outs = {"fp32": tmp_path / "m32", "single": tmp_path / "ms", "bf16": tmp_path / "m16",
            "to_bf16": tmp_path / "m32to16"}
    export_merged(tmp_path / "run32", outs["fp32"], max_shard_size="30KB", log=quiet)
    export_merged(tmp_path / "runs", outs["single"], log=quiet)
    export_merged(tmp_path / "run16", outs["bf16"], log=quiet)
    export_merged(tmp_path / "run32", outs["to_bf16"], dtype="bfloat16", log=quiet)

    got = load_in_fresh_process(tmp_path, list(outs.values()))

    for name, model, base in (("fp32", fp32, fp32_base), ("single", single, single_base)):
        expected = logits(model)
        assert (expected - logits(base)).abs().max() > 1e-2  # the adapter matters: no accidental pass
        assert (got[str(outs[name])] - expected).abs().max() <= 1e-4
        assert got[str(outs[name]) + ":dtype"] == "torch.float32"
    expected16 = logits(bf16)
    assert (expected16 - logits(bf16_base)).abs().max() > 0.1 * expected16.abs().max()
    assert (got[str(outs["bf16"])] - expected16).abs().max() <= BF16_RELATIVE_TOLERANCE * expected16.abs().max()
    assert got[str(outs["bf16"]) + ":dtype"] == "torch.bfloat16"
    assert got[str(outs["to_bf16"]) + ":dtype"] == "torch.bfloat16"
    assert json.loads((outs["to_bf16"] / "config.json").read_text())["dtype"] == "bfloat16"

    files = set(os.listdir(outs["fp32"]))
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json"} <= files
    assert len([f for f in files if f.endswith(".safetensors")]) > 2
    assert not any(f.startswith("EXPORT") for f in files)
    assert not list(tmp_path.glob("*" + TEMP_SUFFIX))


def _output_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def test_merged_weights_are_w_plus_delta_rounded_once_and_the_rest_is_untouched(tmp_path):
    base = make_base(tmp_path / "base", dtype=torch.bfloat16)
    adapted = make_run(tmp_path / "run", tmp_path / "base", base, scale=0.15)
    export_merged(tmp_path / "run", tmp_path / "out", max_shard_size="20KB", log=quiet)
    merged = _output_tensors(tmp_path / "out")
    original = dict(base.named_parameters())
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(original) == set(merged)
    trained = dict(adapted.named_parameters())
    for name, layer in ((n, m) for n, m in adapted.named_modules() if hasattr(m, "delta_weight")):
        # Delta computed in float32 from the TT cores, added in float32, rounded to bf16 once:
        # the closest bf16 checkpoint to the adapted model that exists.
        a = tt_to_dense([c.float() for c in layer.loretta_A.cores()], layer.in_features, layer.r)
        b = tt_to_dense([c.float() for c in layer.loretta_B.cores()], layer.r, layer.out_features)
        exact = original[f"{name}.weight"].float() + (a @ b).T * layer.scaling
        assert torch.equal(merged[f"{name}.weight"], exact.to(torch.bfloat16))
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(merged[name], trained[name])
        assert not torch.equal(merged[name], original[name])
    assert torch.equal(merged["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    assert torch.equal(merged["lm_head.weight"], original["lm_head.weight"])


def test_an_update_lost_to_bf16_rounding_is_measured_and_warned_about_with_the_fix(tmp_path):
    base = make_base(tmp_path / "base", dtype=torch.bfloat16, shard=None)
    # TT cores of 0.02 give |Delta W| ~1e-6 x |W|: far below half a bf16 step of every weight.
    # Cores of 0.15 give |Delta W| ~ 0.1 x |W|, which bf16 keeps up to its rounding noise.
    make_run(tmp_path / "small", tmp_path / "base", base, scale=0.02)
    make_run(tmp_path / "large", tmp_path / "base", base, scale=0.15)
    adapter_config = json.loads((tmp_path / "small" / "adapter" / "adapter_config.json").read_text())
    targets = {f"{module}.weight" for module in adapter_config["target_shapes"]}

    def merged(run: str, dtype: str | None = None) -> tuple[dict, list[str]]:
        messages = []
        out = tmp_path / f"{run}-{dtype}"
        export_merged(tmp_path / run, out, dtype=dtype, log=messages.append)
        record = json.loads((out / "loretta_export.json").read_text())["update_rounding"]
        return record, [m for m in messages if m.startswith("warning")]

    record, warnings = merged("small")
    assert record["dtype"] == "bfloat16" and set(record["per_tensor"]) == targets
    assert record["lost"] > 0.99 and record["kept"] < 0.01  # the file holds the base weights
    assert len(warnings) == 1 and "bfloat16" in warnings[0]
    assert "--dtype float32" in warnings[0] and "--format peft-lora" in warnings[0]
    record, warnings = merged("small", "float32")
    assert record["dtype"] == "float32" and record["lost"] == 0 and record["kept"] == 1 and not warnings
    record, warnings = merged("large")
    assert record["lost"] < 0.1 and record["kept"] > 0.99 and not warnings
    # The export a run writes at its end passes the warning on to the training log.
    run_log = []
    export_run_merged(tmp_path / "small", warn=run_log.append)
    assert len(run_log) == 1 and run_log[0].startswith("warning: rounding the merged weights to bfloat16")


@pytest.mark.parametrize("legacy", [False, True], ids=["bin", "bin-pre-1.6-format"])
def test_bin_shards_export_the_same_bytes_as_safetensors(tmp_path, legacy):
    base = make_base(tmp_path / "st")
    to_bin_shards(tmp_path / "st", tmp_path / "bin", legacy=legacy)
    make_run(tmp_path / "run", tmp_path / "st", base)
    export_merged(tmp_path / "run", tmp_path / "from_st", max_shard_size="30KB", log=quiet)
    export_merged(tmp_path / "run", tmp_path / "from_bin", base=str(tmp_path / "bin"), max_shard_size="30KB",
                  log=quiet)
    weights = sorted(p.name for p in (tmp_path / "from_st").iterdir() if p.name.startswith("model"))
    assert len(weights) > 3 and weights == sorted(p.name for p in (tmp_path / "from_bin").iterdir()
                                                  if p.name.startswith("model"))
    for name in weights:
        assert (tmp_path / "from_st" / name).read_bytes() == (tmp_path / "from_bin" / name).read_bytes(), name


def test_verify_reports_the_logit_difference_and_catches_a_wrong_export(tmp_path, fp32_run):
    run, base_dir, base, adapted = fp32_run
    result = export_merged(run, tmp_path / "out", verify=True, log=quiet)
    assert result.verify.ok and result.verify.max_abs_diff <= 1e-4
    # The same check against another run's adapter must fail loudly.
    make_run(tmp_path / "other", base_dir, base, seed=5)
    report = verify_export("merged", base_dir, tmp_path / "other" / "adapter", tmp_path / "out", torch.float32)
    assert not report.ok and report.max_abs_diff > 100 * report.tolerance


# ---------------------------------------------------------------- peft-lora and adapter

def test_peft_lora_export_loads_with_stock_peft_and_matches(tmp_path, fp32_run):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    run, base_dir, base, adapted = fp32_run
    export_lora(run, tmp_path / "lora", log=quiet)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16.0
    assert config["modules_to_save"] == ["input_layernorm", "norm", "post_attention_layernorm"]
    served = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "lora")
    assert (logits(served.eval()) - logits(adapted)).abs().max() <= 1e-5

    # Same tensors as the core's model-based export, without building a model.
    export_peft_lora(adapted, tmp_path / "from_model")
    ours = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    core = load_file(tmp_path / "from_model" / "adapter_model.safetensors")
    assert ours.keys() == core.keys()
    assert all(torch.allclose(ours[k], core[k], atol=1e-6, rtol=1e-5) for k in ours)


def test_peft_lora_without_norms_for_vllm_warns_how_far_the_norms_moved(tmp_path, fp32_run):
    run, *_ = fp32_run
    messages = []
    export_lora(run, tmp_path / "lora", lora_norms="drop", log=messages.append)
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["modules_to_save"] is None
    assert all(".lora_" in key for key in load_file(tmp_path / "lora" / "adapter_model.safetensors"))
    assert any("not exact" in m for m in messages)


@pytest.mark.parametrize("method", ["rep", "adp"])
def test_adapter_export_is_a_self_contained_run_dir(tmp_path, method):
    base = make_base(tmp_path / "base")
    adapted = make_run(tmp_path / "run", tmp_path / "base", base, method=method, scale=0.3)
    export_adapter(tmp_path / "run", tmp_path / "exported", log=quiet)
    assert sorted(os.listdir(tmp_path / "exported")) == ["adapter.safetensors", "adapter_config.json",
                                                         "adapter_model.safetensors", "loretta_export.json",
                                                         "run_config.json"]
    reloaded = load_adapter(tiny_llama(), tmp_path / "exported")
    assert torch.equal(logits(reloaded), logits(adapted))
    if method == "rep":  # and it is a RUN_DIR that exports again
        export_merged(tmp_path / "exported", tmp_path / "merged", log=quiet)
        assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_adapter_and_base_given_directly(tmp_path, fp32_run):
    run, base_dir, _, adapted = fp32_run
    export(None, tmp_path / "out", adapter=run / "adapter", base=str(base_dir), log=quiet)
    from transformers import AutoModelForCausalLM

    assert (logits(AutoModelForCausalLM.from_pretrained(tmp_path / "out")) - logits(adapted)).abs().max() <= 1e-4


def test_hub_id_resolves_through_the_local_hf_cache_only(tmp_path, fp32_run, monkeypatch):
    import huggingface_hub.constants

    run, base_dir, _, adapted = fp32_run
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for path in base_dir.iterdir():
        (snapshot / path.name).symlink_to(path)  # the HF cache links snapshot files to blobs
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    export_merged(run, tmp_path / "out", base="tiny-org/tiny-llama", log=quiet)
    assert (tmp_path / "out" / "tokenizer.json").is_file() and not (tmp_path / "out" / "tokenizer.json").is_symlink()
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        export_merged(run, tmp_path / "out2", base="tiny-org/not-downloaded", log=quiet)
    assert_nothing_written(tmp_path / "out2")


# ---------------------------------------------------------------- user errors: nothing is written

def test_adp_with_merged_or_peft_lora_explains_why_and_what_works(tmp_path):
    base = make_base(tmp_path / "base")
    make_run(tmp_path / "run", tmp_path / "base", base, method="adp")
    for fmt in ("merged", "peft-lora"):
        with pytest.raises(ValueError, match=r"nonlinear.*--format adapter"):
            export(tmp_path / "run", tmp_path / "out", format=fmt, log=quiet)
        assert_nothing_written(tmp_path / "out")


def test_missing_or_incomplete_base_checkpoint(tmp_path, fp32_run):
    run, base_dir, *_ = fp32_run
    with pytest.raises(FileNotFoundError, match="not a directory"):
        export_merged(run, tmp_path / "out", base=str(tmp_path / "nowhere" / "model"), log=quiet)
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_bytes((base_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="no model weights"):
        export_merged(run, tmp_path / "out", base=str(tmp_path / "no_weights"), log=quiet)
    shard = next(base_dir.glob("model-00003-*.safetensors"))
    good = shard.read_bytes()
    shard.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")  # not pulled
    with pytest.raises(ValueError, match="corrupt safetensors header.*re-download"):
        export_merged(run, tmp_path / "out", log=quiet)
    shard.write_bytes(good)
    next(base_dir.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        export_merged(run, tmp_path / "out", log=quiet)
    assert_nothing_written(tmp_path / "out")


def test_base_with_other_shapes_is_refused_before_writing(tmp_path, fp32_run):
    run, *_ = fp32_run
    make_base(tmp_path / "wide", hidden=96)
    with pytest.raises(ValueError, match=r"does not fit the adapter.*q_proj.weight has shape \[96, 96\]"):
        export_merged(run, tmp_path / "out", base=str(tmp_path / "wide"), log=quiet)
    assert_nothing_written(tmp_path / "out")


def test_damaged_adapter_or_inconsistent_run_is_refused(tmp_path, fp32_run):
    run, *_ = fp32_run
    config = json.loads((run / "run_config.json").read_text())
    (run / "run_config.json").write_text(json.dumps({**config, "method": "lora"}))
    with pytest.raises(ValueError, match="plain LoRA run"):
        export_merged(run, tmp_path / "out", log=quiet)
    (run / "run_config.json").write_text(json.dumps(config))
    tensors = load_file(run / "adapter" / "adapter.safetensors")
    del tensors["model.layers.1.mlp.up_proj.loretta_B.tt_cores"]
    from safetensors.torch import save_file
    save_file(tensors, run / "adapter" / "adapter.safetensors")
    with pytest.raises(ValueError, match="does not match the checksum recorded"):
        export_merged(run, tmp_path / "out", log=quiet)
    # Without the checksum (an adapter of an earlier version), the missing tensor itself is named.
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    del adapter_config["weights_sha256"]
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    with pytest.raises(ValueError, match="up_proj.loretta_B"):
        export_merged(run, tmp_path / "out", log=quiet)
    assert_nothing_written(tmp_path / "out")


def test_out_dir_not_empty_overwrite_and_protected_dirs(tmp_path, fp32_run):
    run, base_dir, *_ = fp32_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        export_merged(run, out, log=quiet)
    assert os.listdir(out) == ["keep.txt"]
    # --overwrite replaces an export of this program only, never a folder of the user's.
    with pytest.raises(ValueError, match="not an export of this program"):
        export_merged(run, out, overwrite=True, log=quiet)
    assert os.listdir(out) == ["keep.txt"]
    (out / "keep.txt").unlink()
    export_merged(run, out, log=quiet)
    (out / "config.json").write_text("{}")  # an export's own file, changed: still the export's
    export_merged(run, out, overwrite=True, log=quiet)
    assert json.loads((out / "config.json").read_text()) != {}
    assert not list(tmp_path.glob("out.export-*"))
    for reads in (base_dir, run, tmp_path):
        with pytest.raises(ValueError, match="which this export reads"):
            export_merged(run, reads, overwrite=True, log=quiet)
    assert (base_dir / "config.json").is_file() and (run / "adapter").is_dir()


def test_an_error_while_writing_removes_the_temporary_dir(tmp_path, fp32_run, monkeypatch):
    from loretta_ds.export import api

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "write_model_files", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_merged(fp32_run[0], tmp_path / "out", log=quiet)
    assert_nothing_written(tmp_path / "out")


def test_a_running_export_is_not_disturbed(tmp_path, fp32_run):
    """A second export into the same OUT_DIR refuses while the first holds its lock."""
    temp = Path(str(tmp_path / "out") + TEMP_SUFFIX)
    temp.mkdir()
    (temp / "EXPORT_INCOMPLETE").write_text(json.dumps({"pid": 1, "host": "h"}))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(temp / "EXPORT_INCOMPLETE")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match="another export .* is running"):
            export_merged(fp32_run[0], tmp_path / "out", log=quiet)
        assert (temp / "EXPORT_INCOMPLETE").is_file()
    finally:
        holder.kill()
        holder.wait()


def test_cli_and_launch_shim(tmp_path, fp32_run, capsys):
    from loretta_ds.cli import main

    run, *_ = fp32_run
    assert main(["export", str(run), str(tmp_path / "lora"), "--format", "peft-lora", "--dtype", "bf16"]) == 0
    assert load_file(tmp_path / "lora" / "adapter_model.safetensors")[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].dtype == torch.bfloat16
    assert main(["export", str(run), str(tmp_path / "lora")]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "x"), "--format", "adapter", "--dtype", "bf16"]) == 2
    capsys.readouterr()
    assert main(["export", str(tmp_path / "y"), "--adapter", str(run / "adapter")]) == 2  # no --base
    assert "base model is unknown" in capsys.readouterr().err

    shim = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(run), str(tmp_path / "m"),
                           "--max_shard_size", "huge"], capture_output=True, text=True)
    assert shim.returncode == 2 and "max_shard_size 'huge' is not a size" in shim.stderr
    assert_nothing_written(tmp_path / "m")


def test_the_disk_check_scales_with_the_export_and_speaks_in_its_units(tmp_path, small_disk):
    """On a 1 MiB disk a megabyte-sized adapter export fits (the margin is a tenth of the export,
    not a fixed quarter gigabyte); a merged export that does not fit is refused before anything
    is written, in units that show the sizes (no "needs 0.0 GB but 0.0 GB")."""
    base = make_base(tmp_path / "base", hidden=128, intermediate=344)  # 1.6 MB of weights: more than the disk
    run_dir = tmp_path / "run"
    make_run(run_dir, tmp_path / "base", base)
    export(run_dir, small_disk / "adapter", format="adapter", log=quiet)
    assert (small_disk / "adapter" / "adapter.safetensors").is_file()
    with pytest.raises(ValueError) as refused:
        export(run_dir, small_disk / "merged", log=quiet)
    message = str(refused.value)
    assert re.search(r"the export needs [\d.]+ (KB|MB) \(and [\d.]+ KB to spare\) but .* has [\d.]+ (KB|MB) free",
                     message), message
    assert not (small_disk / "merged").exists() and sorted(p.name for p in small_disk.iterdir()) == ["adapter"]
