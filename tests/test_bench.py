"""The benchmark at a tiny size: every contender runs, all outputs appear, the pieces measure right."""
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loretta_ds import LorettaConfig, inject
from loretta_ds.adapters import LorettaAdpLinear, LorettaRepLinear
from benchmarks.harness import BenchConfig, run_bench
from benchmarks.harness.baselines import DenseAdapterLinear, add_dense_adapters, add_plain_lora
from benchmarks.harness.config import DEFAULT_CONTENDERS
from benchmarks.harness.memory import ProcPeakMeter, ProfilerPeakMeter
from benchmarks.harness.report import write_all
from benchmarks.harness.sizes import checkpoint_bytes, optimizer_state_bytes
from benchmarks.bench import main as bench_main

from tiny_models import randomize_adapter, tiny_llama

REPO = Path(__file__).resolve().parents[1]
# hidden 768 so the reference package (fixed TT shape table) runs too; everything else tiny.
TINY = dict(hidden=768, intermediate=256, layers=1, heads=12, vocab=128, batch=1, seq_len=8,
            steps=2, warmup=1, memory_repeats=1)


@pytest.fixture(scope="module")
def tiny_report():
    pytest.importorskip("peft")
    pytest.importorskip("loretta")
    return run_bench(BenchConfig(**TINY), log=lambda *_: None)


@pytest.mark.slow
def test_every_contender_runs_and_reports(tiny_report):
    rows = {r["name"]: r for r in tiny_report.rows}
    assert list(rows) == DEFAULT_CONTENDERS and not tiny_report.skipped
    assert rows["floor"]["trainable_params"] == 0 and rows["floor"]["checkpoint_bytes"] == 0
    assert rows["lora"]["trainable_params"] == 2 * 8 * (768 + 768)  # q and v, A and B
    for name, row in rows.items():
        # The reported figures are what the samples say: the median step, its quartiles around it,
        # phases that add up to no more than a step, and ratios that are per-round medians.
        samples = row["step_ms_samples"]
        assert len(samples) == TINY["steps"] and all(t > 0 for t in samples)
        assert row["step_ms"] == pytest.approx(statistics.median(samples), rel=1e-3)
        assert row["step_ms_q1"] <= row["step_ms"] <= row["step_ms_q3"]
        assert 0 < row["forward_ms"] <= max(samples) and row["peak_step_bytes"] > 0
        assert row["tokens_per_s"] == pytest.approx(TINY["batch"] * TINY["seq_len"] / (row["step_ms"] / 1e3))
        for ref, key in (("lora", "step_vs_lora"), ("floor", "step_vs_floor")):
            ratios = [a / b for a, b in zip(samples, rows[ref]["step_ms_samples"])]
            assert row[key] == pytest.approx(statistics.median(ratios), rel=1e-2)
        if name != "floor":
            # AdamW keeps exp_avg and exp_avg_sq (fp32) per trainable value, plus a step scalar.
            assert 8 * row["trainable_params"] <= row["optimizer_state_bytes"] < 9 * row["trainable_params"] + 4096
            assert row["checkpoint_bytes"] > 4 * row["trainable_params"]
    assert rows["lora"]["step_vs_lora"] == 1.0 and rows["floor"]["step_vs_floor"] == 1.0
    # At hidden 768 rep's TT cores hold 10.6x fewer values than LoRA's matrices, and the file
    # without the trained norms is over 10x smaller (one header entry per TT matrix; one per core
    # made it 8.9x).
    rep_cores = rows["rep"]["trainable_params"] - (2 * TINY["layers"] + 1) * 768
    assert rows["lora"]["trainable_params"] > 10 * rep_cores
    assert rows["lora"]["checkpoint_bytes"] > 10 * rows["rep"]["checkpoint_bytes_without_norms"]


@pytest.mark.slow
def test_outputs_md_json_png(tiny_report, tmp_path):
    tiny_report.command = "python -m benchmarks.bench --layers 1"
    paths = write_all(tiny_report, tmp_path)
    md = paths["md"].read_text()
    assert md.startswith("Command: `python -m benchmarks.bench --layers 1`")
    for row in tiny_report.rows:
        assert row["label"] in md
    data = json.loads(paths["json"].read_text())
    assert [r["name"] for r in data["rows"]] == DEFAULT_CONTENDERS
    assert data["config"]["hidden"] == 768 and "load_before" in data["machine"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_function_and_module_entry_points(tmp_path):
    args = ["--hidden", "64", "--intermediate", "96", "--heads", "4", "--layers", "1", "--vocab", "64",
            "--batch", "1", "--seq_len", "4", "--steps", "1", "--warmup", "0", "--memory_repeats", "1",
            "--contenders", "floor,rep,adp", "--no_chart", "--quiet"]
    assert bench_main([*args, "--out_dir", str(tmp_path / "cli")]) == 0
    assert "LoRETTA_adp" in (tmp_path / "cli" / "bench.md").read_text()
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench", *args, "--out_dir", "-"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| LoRETTA_rep + norms (loretta_ds) |" in done.stdout


def test_bad_bench_arguments_are_user_errors(capsys):
    assert bench_main(["--contenders", "floor,nope"]) == 2
    assert "unknown contenders ['nope']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="clock"):
        BenchConfig(clock="cpu", device="cuda")


# ---------------------------------------------------------------- baselines

def _outputs_and_grads(module, x):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    for p in module.parameters():
        p.grad = None
    return y.detach(), grads, x.grad


def _textbook_forward(layer, x):
    """The layers' maths written plainly (scale on the output, separate adds), as the paper
    states it: the core layers' fused forwards must give the same values and gradients."""
    if isinstance(layer, LorettaRepLinear):
        return layer.base_layer(x) + (x @ layer.loretta_A()) @ layer.loretta_B() * layer.scaling

    def residual(h):
        hidden = torch.relu(h @ layer.loretta_down() + layer.loretta_down_bias)
        return h + (hidden @ layer.loretta_up() + layer.loretta_up_bias) * layer.scaling
    if layer.position == "input":
        return layer.base_layer(residual(x))
    return residual(layer.base_layer(x))


class _Textbook(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return _textbook_forward(self.layer, x)


@pytest.mark.parametrize("kind", ["rep", "adp_input", "adp_output"])
def test_fused_core_forward_equals_the_textbook_maths(kind):
    torch.manual_seed(0)
    base = torch.nn.Linear(48, 40, bias=False)
    if kind == "rep":
        layer = LorettaRepLinear(base, 4, 8.0, 3)
    else:  # scaling != 1 so folding the scale into the small matrices is exercised
        layer = LorettaAdpLinear(base, kind.split("_")[1], 16, 3, scaling=0.7)
    layer.reset_parameters("reference")
    x = torch.randn(2, 5, 48)
    y_core, g_core, x_core = _outputs_and_grads(layer, x)
    y_plain, g_plain, x_plain = _outputs_and_grads(_Textbook(copy.deepcopy(layer)), x)
    g_plain = {name.removeprefix("layer."): grad for name, grad in g_plain.items()}
    torch.testing.assert_close(y_core, y_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_core, x_plain, rtol=1e-5, atol=1e-6)
    assert g_core.keys() == g_plain.keys() and len(g_core) > 2
    for name in g_core:
        torch.testing.assert_close(g_core[name], g_plain[name], rtol=1e-5, atol=1e-6)


def test_dense_adapter_baseline_placement_and_trainable_set(token_ids):
    base = tiny_llama()
    model = add_dense_adapters(copy.deepcopy(base), bottleneck=16)
    layer = model.model.layers[0].mlp
    assert isinstance(layer.gate_proj, DenseAdapterLinear) and layer.gate_proj.position == "input"
    assert isinstance(layer.down_proj, DenseAdapterLinear) and layer.down_proj.position == "output"
    # zero up-projection: the adapted model starts as the base model
    torch.testing.assert_close(model(input_ids=token_ids).logits, base(input_ids=token_ids).logits)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("adapter_" in n or "norm" in n for n in trainable)
    hidden, layers, b = 64, 2, 16
    adapters = layers * 3 * (2 * hidden * b + b + hidden)
    norms = (2 * layers + 1) * hidden
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == adapters + norms


def test_plain_lora_matches_peft_parameter_count():
    peft = pytest.importorskip("peft")
    ours = add_plain_lora(tiny_llama())
    reference = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert count(ours) == count(reference)


# ---------------------------------------------------------------- sizes and memory meters

def test_llama2_7b_rep_checkpoint_is_over_10x_smaller_than_lora():
    from benchmarks.harness.checkpoints import checkpoint_table, trainable_file_bytes
    rep_params, rep_bytes = trainable_file_bytes("llama2-7b", "rep")
    lora_params, lora_bytes = trainable_file_bytes("llama2-7b", "lora")
    assert (rep_params, lora_params) == (368_640, 4_194_304)  # the reference implementation's counts (norms included)
    assert lora_bytes >= 10 * rep_bytes
    # bf16 values plus the safetensors header: one entry per TT matrix and norm, not per core
    # (one per core made the header 10% of the file).
    assert rep_bytes < 1.05 * 2 * rep_params
    assert f"{lora_bytes / rep_bytes:.2f}x" in checkpoint_table([{"model": "llama2-7b", "method": "rep", "trainable_params": rep_params,
                                          "checkpoint_bytes": rep_bytes, "lora_over_this": lora_bytes / rep_bytes}])


def test_checkpoint_and_optimizer_sizes_are_measured(tmp_path):
    model = inject(tiny_llama(), LorettaConfig())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable)
    assert optimizer_state_bytes(optimizer) == 0  # nothing before the first step
    for p in trainable:
        p.grad = torch.ones_like(p)
    optimizer.step()
    values = sum(p.numel() for p in trainable)
    assert optimizer_state_bytes(optimizer) == 8 * values + 4 * len(trainable)
    size = checkpoint_bytes(model)
    tensors = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    from safetensors.torch import save_file
    save_file(tensors, str(tmp_path / "x.safetensors"))
    assert size == os.path.getsize(tmp_path / "x.safetensors")
    assert len(load_file(str(tmp_path / "x.safetensors"))) == len(trainable)
    assert checkpoint_bytes(model, include_norms=False) < size


def test_tensor_meter_sees_a_known_peak():
    if not ProfilerPeakMeter.available():
        pytest.skip("torch profiler memory timeline unavailable")
    keep = []

    def step():
        big = torch.ones(1 << 20)         # 4 MiB, freed at the end of the step
        keep.append(torch.ones(1 << 18))  # 1 MiB that stays
        del big

    peak = ProfilerPeakMeter().measure(step)
    assert 5 * 2**20 <= peak < 6 * 2**20


def test_rss_meter_sees_a_known_peak():
    if not ProcPeakMeter.available():
        pytest.skip("needs Linux /proc/self/clear_refs")

    def step():
        big = torch.ones(8 << 20)  # 32 MiB touched, then freed
        del big

    peak = ProcPeakMeter().measure(step)
    assert 30 * 2**20 <= peak < 48 * 2**20


# ---------------------------------------------------------------- benchmarks/gpu.sh

def test_gpu_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    assert subprocess.run([bash, "-n", str(REPO / "benchmarks" / "gpu.sh")]).returncode == 0


@pytest.mark.slow
def test_gpu_script_runs_tiny_on_cpu(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", DTYPE="fp32", HIDDEN="64", INTERMEDIATE="172",
               HEADS="4", VOCAB="128", LAYERS="1", BATCH="1", SEQ_LEN="8", STEPS="2", WARMUP="1",
               OUT=str(tmp_path / "gpu.md"))
    done = subprocess.run([bash, str(REPO / "benchmarks" / "gpu.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "gpu.md").read_text()
    assert table in done.stdout
    for label in ("floor", "LoRETTA_rep", "LoRETTA_adp", "LoRA r=8"):
        assert label in table
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert {r["name"] for r in report["rows"]} == {"floor", "rep", "adp", "lora"}


@pytest.mark.slow
def test_gpu_script_explains_missing_cuda(tmp_path):
    bash = shutil.which("bash")
    if bash is None or torch.cuda.is_available():
        pytest.skip("needs bash and a machine without CUDA")
    done = subprocess.run([bash, str(REPO / "benchmarks" / "gpu.sh")], env=dict(os.environ, PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "sees no CUDA device" in done.stderr


@pytest.mark.slow
def test_layer_microbenchmark_runs_every_kind(tmp_path):
    from benchmarks.harness.layer import LAYER_KINDS, layer_bench, layer_table
    pytest.importorskip("peft")
    pytest.importorskip("loretta")
    rows = layer_bench(features=768, tokens=8, repeats=2, warmup=1)
    assert [r["kind"] for r in rows] == LAYER_KINDS
    assert rows[0]["overhead_ms"] == 0.0 and all(r["ms"] > 0 for r in rows)
    assert "| ref_rep |" in layer_table(rows, 768, 8, 2)
    assert bench_main(["--layer", "--hidden", "64", "--heads", "4", "--batch", "1", "--seq_len", "4",
                     "--steps", "2", "--out_dir", str(tmp_path)]) == 0
    assert (tmp_path / "bench_layer.md").read_text().startswith("Command: `python -m benchmarks.bench --layer")
