"""Bad input across `loretta-ds train | export | estimate | count` and the SLURM helper.

Every case runs the real command line in a process of its own and must: exit non-zero, print one
one-paragraph message that names the problem and the fix (once, also with two ranks), show no
traceback (unless --debug), fail before any model loads, and write nothing (the output directory
stays absent, or unchanged when it existed).

"Before any model loads" is checked for real: the training cases use a copy of the built-in model
whose weights file is garbage, so a case that got as far as loading weights would fail with a
different message. The `loretta-ds` cases run in children forked from one interpreter that has
imported the CLI and its libraries (tests/cli_forkserver.py): as subprocesses they were mostly
interpreter start-up. The SLURM helper's cases are bash subprocesses. Each case's own wall time is
recorded and printed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cli_forkserver import CliForkServer
from reliability_support import REPO, TRAIN, ZERO3_OFFLOAD, clean_env, free_port
from tiny_models import randomize_adapter, tiny_llama

pytestmark = pytest.mark.slow  # about 60 command lines

# A case may take this long on a loaded machine; alone on two idle cores each takes a few seconds.
CASE_TIME_LIMIT_S = 60


@dataclass
class Case:
    command: list[str]
    fragments: tuple[str, ...]  # the problem and the fix, all in the message
    watched: Path  # must stay absent, or unchanged if it exists beforehand
    env: dict = field(default_factory=dict)
    launcher_error: bool = False  # the SLURM helper's "[launch] ERROR:" lines instead of "error:"
    expect_traceback: bool = False


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float
    before: dict | None
    after: dict | None


def snapshot(path: Path) -> dict | None:
    """Every file under ``path`` with its bytes' digest (None when the path does not exist)."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in files}


class Workspace:
    """The files the cases read: broken data and configs, model directories, a trained run."""

    def __init__(self, root: Path):
        from loretta_ds import LorettaConfig, inject, save_adapter
        from loretta_ds.tiny_llama import ensure_tiny_llama

        self.root = root
        builtin = ensure_tiny_llama()
        # The built-in model with garbage weights: loading them fails, reading config/tokenizer works.
        self.model = root / "model-garbage-weights"
        shutil.copytree(builtin, self.model)
        (self.model / "model.safetensors").write_bytes(b"these are not weights" * 100)
        self.no_tokenizer = root / "model-without-tokenizer"
        self.no_tokenizer.mkdir()
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy(self.model / name, self.no_tokenizer / name)

        self.bad_jsonl = self.write("bad.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad" "label": "neg"}\n')
        self.bad_csv = self.write("bad.csv", 'text,label\n"an unterminated quote,pos\n')
        self.bad_yaml = self.write("bad.yaml", "lr: [0.1, 0.2\nmax_steps: 3\n")
        self.typed_yaml = self.write("typed.yaml", "lr: fast\n")
        self.unknown_yaml = self.write("unknown.yaml", "learning_rate: 0.01\n")
        self.bad_ds_config = self.write("ds-bad.json", '{"zero_optimization": {"stage": 3,}}')
        # YAML values of the wrong kind: numbers where text is meant, a word where a number is.
        for key, value in (("target_modules", "5"), ("model", "5"), ("output_dir", "5"), ("alpha", "big")):
            self.write(f"yaml-{key}.yaml", f"{key}: {value}\n")
        base_config = json.loads(Path(ZERO3_OFFLOAD).read_text())
        nvme = copy.deepcopy(base_config)
        nvme["zero_optimization"]["offload_param"] = {"device": "nvme", "nvme_path": str(root / "no-nvme-here")}
        self.nvme_missing = self.write("ds-nvme-missing.json", json.dumps(nvme))
        zero2_nvme = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
        zero2_nvme["zero_optimization"]["offload_optimizer"] = {"device": "nvme", "nvme_path": str(root)}
        self.zero2_nvme = self.write("ds-zero2-nvme.json", json.dumps(zero2_nvme))
        clipped = copy.deepcopy(base_config)
        clipped["gradient_clipping"] = 0.3
        self.clipped = self.write("ds-clip.json", json.dumps(clipped))
        warm = copy.deepcopy(base_config)
        warm["scheduler"]["params"]["warmup_num_steps"] = 50
        self.warm = self.write("ds-warmup.json", json.dumps(warm))
        fp16 = json.loads(Path(ZERO3_OFFLOAD).read_text())
        fp16["fp16"] = {"enabled": True}
        self.fp16_ds_config = self.write("ds-fp16.json", json.dumps(fp16))
        self.bad_hf_config = self.write("config.json", '{"model_type": "llama", "hidden_size": 64,,}')

        # A checkpoint written by a run with another adapter config (other tensors, other shapes).
        self.foreign_checkpoint = root / "foreign" / "checkpoints" / "step-2"
        self.foreign_checkpoint.mkdir(parents=True)
        save_file({"model.layers.0.self_attn.q_proj.loretta_A.tt_cores": torch.zeros(6)},
                  str(self.foreign_checkpoint / "trainable.safetensors"))
        (self.foreign_checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2, "data": {}}))
        files = {name: [(self.foreign_checkpoint / name).stat().st_size,
                        hashlib.sha256((self.foreign_checkpoint / name).read_bytes()).hexdigest()]
                 for name in ("trainable.safetensors", "trainer_state.json")}
        (self.foreign_checkpoint / "COMPLETE").write_text(json.dumps({"step": 2, "files": files}))

        # A run directory that holds another run (trained with another learning rate).
        self.other_run = root / "other-run"
        self.other_run.mkdir()
        (self.other_run / "run_config.json").write_text(json.dumps(
            {"model": str(self.model), "method": "rep", "finished": False,
             "train": {"model": str(self.model), "method": "rep", "lr": 0.5, "seed": 0}}))

        # A finished LoRETTA run on a small base, and a base with other shapes.
        self.base = root / "base"
        base_model = tiny_llama(seed=0)
        base_model.save_pretrained(self.base)
        cfg = LorettaConfig(target_modules="all")
        adapted = inject(copy.deepcopy(base_model), cfg)
        randomize_adapter(adapted)
        self.run = root / "run"
        save_adapter(adapted, self.run / "adapter")
        (self.run / "run_config.json").write_text(json.dumps(
            {"model": str(self.base), "method": "rep", "loretta": cfg.to_dict(), "dtype": "float32"}))
        self.wide_base = root / "wide-base"
        tiny_llama(seed=0, hidden=96).save_pretrained(self.wide_base)
        self.full_out = root / "export-not-empty"
        self.full_out.mkdir()
        (self.full_out / "keep.txt").write_text("mine")

        # Damaged files a reader meets: a data file that is not UTF-8; an adapter cut in half, or
        # whose header length is absurd; base shards whose header is not what safetensors writes.
        self.not_utf8 = root / "latin1.jsonl"
        self.not_utf8.write_bytes(b'{"text": "fine", "label": "positive"}\n{"text": "caf\xe9", "label": "negative"}\n')
        self.truncated_run = self.copy_run("run-truncated-adapter", lambda b: b[:len(b) // 2])
        self.huge_header_run = self.copy_run("run-huge-header-adapter", lambda b: struct.pack("<Q", 10**15) + b[8:])
        self.list_header_base = self.copy_base("base-header-list", lambda header: [1, 2])
        self.entry_base = self.copy_base("base-entry-not-object", lambda header: {**header, first_tensor(header): 5})
        self.offsets_base = self.copy_base("base-no-data-offsets", lambda header: {
            **header, first_tensor(header): {k: v for k, v in header[first_tensor(header)].items()
                                             if k != "data_offsets"}})
        self.linked_out = root / "export-link"
        (root / "export-link-target").mkdir()
        self.linked_out.symlink_to(root / "export-link-target")
        self.not_a_run = root / "neither-run-nor-model"
        self.not_a_run.mkdir()

    def copy_run(self, name: str, damage) -> Path:
        run = self.root / name
        shutil.copytree(self.run, run)
        weights = run / "adapter" / "adapter.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        return run

    def copy_base(self, name: str, rewrite) -> Path:
        """A copy of the small base whose shard header is rewritten (padded to its old length)."""
        base = self.root / name
        shutil.copytree(self.base, base)
        shard = base / "model.safetensors"
        data = shard.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.dumps(rewrite(json.loads(data[8:8 + length])), separators=(",", ":")).encode()
        assert len(header) <= length
        shard.write_bytes(data[:8] + header.ljust(length) + data[8 + length:])
        return base

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def out(self, name: str) -> Path:
        return self.root / "outputs" / name


def first_tensor(header: dict) -> str:
    return next(name for name in header if name != "__metadata__")


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "loretta_ds.cli", *map(str, args)]


def train(ws: Workspace, name: str, *args, model: Path | None = None) -> tuple[list[str], Path]:
    out = ws.out(name)
    return cli("train", "--model", model or ws.model, "--output_dir", out, *args), out


def slurm(ws: Workspace, name: str, **env) -> tuple[dict, Path]:
    out = ws.out(name)
    values = {"MODEL": str(ws.model), "DATA": "bundled:sentiment", "OUTPUT_DIR": str(out),
              "DS_CONFIG": ZERO3_OFFLOAD, "GPUS_PER_NODE": "2", "DRY_RUN": "1", "PYTHON": sys.executable}
    values.update(env)
    return values, out


def build_cases(ws: Workspace) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def add_train(name, fragments, *args, model=None):
        command, out = train(ws, name, *args, model=model)
        cases[name] = Case(command, fragments, out)

    # --- train: paths, malformed files, types and sizes, presets, dtype, model, resume -------
    add_train("train-dataset-missing", ("nope.jsonl", "does not exist", "check the path"),
              "--dataset", ws.root / "nope.jsonl")
    add_train("train-dataset-malformed-jsonl", (str(ws.bad_jsonl), "line 2", "fix that line"),
              "--dataset", ws.bad_jsonl)
    add_train("train-dataset-malformed-csv", (str(ws.bad_csv), "valid csv"), "--dataset", ws.bad_csv)
    add_train("train-config-malformed-yaml", (str(ws.bad_yaml), "not valid YAML", "line 1"),
              "--config", ws.bad_yaml)
    add_train("train-config-wrong-type", ("lr must be a number", "'fast'"), "--config", ws.typed_yaml)
    add_train("train-config-unknown-key", ("learning_rate", "valid keys"), "--config", ws.unknown_yaml)
    add_train("train-zero-micro-batch", ("micro_batch_size must be an integer >= 1", "got 0"),
              "--micro_batch_size", "0")
    add_train("train-negative-steps", ("max_steps must be an integer >= 1", "got -3"), "--max_steps", "-3")
    add_train("train-lora-zero-rank", ("r must be an integer >= 1", "got 0"), "--method", "lora", "--r", "0")
    add_train("train-ds-config-malformed", (str(ws.bad_ds_config), "not valid JSON", "line 1"),
              "--ds_config", ws.bad_ds_config)
    add_train("train-fp16-on-cpu", ("fp16", "CUDA", "fp16.enabled"), "--ds_config", ws.fp16_ds_config)
    add_train("train-model-missing", ("nowhere", "config.json"), model=ws.root / "nowhere")
    add_train("train-missing-tokenizer", (str(ws.no_tokenizer), "tokenizer", "tokenizer.json"),
              model=ws.no_tokenizer)
    add_train("train-seq-len-over-model-maximum", ("--seq_len 4096", "512", "lower --seq_len"),
              "--seq_len", "4096")
    add_train("train-unknown-bundled-dataset", ("bundled:nope", "bundled:sentiment"), "--dataset", "bundled:nope")
    add_train("train-resume-other-adapter", (str(ws.foreign_checkpoint), "does not fit", "adapter config"),
              "--resume", ws.foreign_checkpoint)
    # --- train: values of the wrong kind (YAML, flags), non-finite numbers, ds_config conflicts -
    for key, fragments in (("target_modules", ("target_modules must be text", 'target_modules: "5"')),
                           ("alpha", ("alpha must be a number", "'big'"))):
        add_train(f"train-yaml-{key}-wrong-kind", fragments, "--config", ws.root / f"yaml-{key}.yaml")
    out = ws.out("train-yaml-model-wrong-kind")  # no --model flag: it would override the YAML's
    cases["train-yaml-model-wrong-kind"] = Case(cli("train", "--output_dir", out, "--config", ws.root / "yaml-model.yaml"),
                                                ("model must be text", 'model: "5"'), out)
    command = cli("train", "--model", ws.model, "--config", ws.root / "yaml-output_dir.yaml")
    cases["train-yaml-output_dir-wrong-kind"] = Case(command, ("output_dir must be text", 'output_dir: "5"'),
                                                     ws.root / "cwd" / "train-yaml-output_dir-wrong-kind")
    command = cli("train", "--model", ws.model, "--output_dir", "")
    cases["train-output-dir-empty"] = Case(command, ("output_dir is empty",),
                                           ws.root / "cwd" / "train-output-dir-empty")
    add_train("train-epochs-inf", ("epochs must be a finite number", "inf"), "--epochs", "inf")
    add_train("train-lr-inf", ("lr must be a finite number", "inf"), "--lr", "inf")
    add_train("train-alpha-nan", ("alpha must be a finite number", "nan"), "--alpha", "nan")
    add_train("train-ds-config-unknown-name", ("zero4", "zero2, zero3, zero3_offload"), "--ds_config", "zero4")
    add_train("train-ds-config-nvme-path-missing", ("no-nvme-here is not a writable directory", "cpu"),
              "--ds_config", ws.nvme_missing)
    add_train("train-ds-config-zero2-nvme", ("needs ZeRO stage 3", "device \"cpu\""), "--ds_config", ws.zero2_nvme)
    add_train("train-ds-config-clipping-conflict", ("--grad_clip 0.5 contradicts gradient_clipping=0.3", "auto"),
              "--ds_config", ws.clipped, "--grad_clip", "0.5")
    add_train("train-ds-config-warmup-conflict", ("--warmup_steps 5 contradicts scheduler.params.warmup_num_steps=50",),
              "--ds_config", ws.warm, "--warmup_steps", "5")
    add_train("train-dataset-not-utf8", (str(ws.not_utf8), "line 2, column 14", "not UTF-8", "save the file as UTF-8"),
              "--dataset", ws.not_utf8)
    add_train("train-dataset-unknown-name", ("'no_such_dataset'", "not a file", "local datasets cache",
                                             "download the dataset once"), "--dataset", "no_such_dataset")
    add_train("train-model-is-a-preset", ("llama2-7b is a preset", "no weights", "pass the directory"),
              model="llama2-7b")
    command = cli("train", "--model", ws.model, "--output_dir", ws.other_run)
    cases["train-output-dir-holds-another-run"] = Case(command, ("holds another run", "lr: 0.5 there",
                                                                 "another --output_dir"), ws.other_run)
    command, out = train(ws, "train-debug-shows-traceback", "--keep_last", "0")
    cases["train-debug-shows-traceback"] = Case([*command[:3], "--debug", *command[3:]], ("keep_last",), out,
                                                expect_traceback=True)

    # --- export ----------------------------------------------------------------------------
    def add_export(name, fragments, run_dir, *args, out=None):
        out = out or ws.out(name)
        cases[name] = Case(cli("export", run_dir, out, *args), fragments, out)

    add_export("export-run-dir-missing", ("does not exist", "OUTPUT_DIR"), ws.root / "nowhere")
    add_export("export-no-adapter", ("holds no LoRETTA adapter", "--adapter"), ws.base)
    add_export("export-unknown-dtype", ("'float8'", "float32"), ws.run, "--dtype", "float8")
    add_export("export-base-other-shapes", ("does not fit the adapter", "[96, 96]"), ws.run,
               "--base", ws.wide_base)
    add_export("export-out-dir-not-empty", ("not empty", "--overwrite"), ws.run, out=ws.full_out)
    add_export("export-adapter-truncated", (str(ws.truncated_run / "adapter" / "adapter.safetensors"),
                                            "not a readable safetensors file", "damaged or truncated"), ws.truncated_run)
    add_export("export-adapter-huge-header", (str(ws.huge_header_run / "adapter" / "adapter.safetensors"),
                                              "header too large", "damaged or truncated"), ws.huge_header_run)
    add_export("export-base-header-list", (str(ws.list_header_base / "model.safetensors"), "a JSON list",
                                           "re-download it"), ws.run, "--base", ws.list_header_base)
    add_export("export-base-entry-not-object", (str(ws.entry_base / "model.safetensors"), "is a JSON int",
                                                "re-download it"), ws.run, "--base", ws.entry_base)
    add_export("export-base-no-data-offsets", (str(ws.offsets_base / "model.safetensors"),
                                               "has no 'data_offsets'", "re-download it"), ws.run,
               "--base", ws.offsets_base)
    add_export("export-out-dir-symlink", (str(ws.linked_out), "is a symbolic link", "pass the directory it points to"),
               ws.run, "--overwrite", out=ws.linked_out)

    # --- estimate and count: they write nothing at all, so their working directory stays empty
    def add_plain(name, fragments, *args):
        cases[name] = Case(cli(*args), fragments, ws.root / "cwd" / name)

    add_plain("estimate-unknown-preset", ("'llama2-8b'", "llama2-7b, llama2-13b, llama2-70b"),
              "estimate", "--model", "llama2-8b")
    add_plain("estimate-zero-nodes", ("nodes must be >= 1", "got 0"), "estimate", "--model", "llama2-7b",
              "--nodes", "0")
    add_plain("estimate-malformed-model-config", (str(ws.bad_hf_config), "not valid JSON", "config.json"),
              "estimate", "--model", ws.bad_hf_config)
    add_plain("count-unknown-preset", ("'llama2-8b'", "preset"), "count", "--model", "llama2-8b")
    add_plain("count-zero-tensor-rank", ("tensor_rank must be an integer >= 1", "got 0"), "count", "--model",
              "llama2-7b", "--tensor_rank", "0")

    # --- generate: reads a run or a model, writes nothing
    add_plain("generate-run-dir-missing", ("nowhere is not a directory", "OUTPUT_DIR"), "generate",
              ws.root / "nowhere", "--prompt", "hi")
    add_plain("generate-neither-run-nor-model", (str(ws.not_a_run), "neither config.json", "run_config.json"),
              "generate", ws.not_a_run, "--prompt", "hi")
    add_plain("generate-zero-new-tokens", ("--max_new_tokens must be at least 1", "got 0"), "generate", ws.model,
              "--prompt", "hi", "--max_new_tokens", "0")
    add_plain("generate-temperature-nan", ("--temperature must be > 0", "got nan", "drop --sample"), "generate",
              ws.model, "--prompt", "hi", "--sample", "--temperature", "nan")
    add_plain("generate-adapter-truncated", (str(ws.truncated_run / "adapter" / "adapter.safetensors"),
                                             "not a readable safetensors file"), "generate", ws.truncated_run,
              "--prompt", "hi")

    # --- the SLURM helper (dry run: its checks are the same, and nothing can start) ---------
    def add_slurm(name, fragments, **env):
        values, out = slurm(ws, name, **env)
        cases[name] = Case(["bash", str(REPO / "slurm" / "_launch.sh"), "run"], fragments, out, env=values,
                           launcher_error=True)

    add_slurm("slurm-model-missing", ("MODEL=", "does not exist", "Set MODEL"), MODEL=str(ws.root / "nowhere"))
    add_slurm("slurm-ds-config-malformed", ("not valid JSON", "fix the file"), DS_CONFIG=str(ws.bad_ds_config))
    add_slurm("slurm-zero-gpus-per-node", ("GPUS_PER_NODE='0'", "positive whole number"), GPUS_PER_NODE="0")
    return cases


CASE_NAMES = [
    "train-dataset-missing", "train-dataset-malformed-jsonl", "train-dataset-malformed-csv",
    "train-config-malformed-yaml", "train-config-wrong-type", "train-config-unknown-key", "train-zero-micro-batch",
    "train-negative-steps", "train-lora-zero-rank", "train-ds-config-malformed", "train-fp16-on-cpu",
    "train-model-missing", "train-missing-tokenizer", "train-seq-len-over-model-maximum",
    "train-unknown-bundled-dataset", "train-resume-other-adapter", "train-output-dir-holds-another-run",
    "train-yaml-target_modules-wrong-kind", "train-yaml-model-wrong-kind", "train-yaml-alpha-wrong-kind",
    "train-yaml-output_dir-wrong-kind", "train-output-dir-empty", "train-epochs-inf", "train-lr-inf",
    "train-alpha-nan", "train-ds-config-unknown-name", "train-ds-config-nvme-path-missing",
    "train-ds-config-zero2-nvme", "train-ds-config-clipping-conflict", "train-ds-config-warmup-conflict",
    "train-dataset-not-utf8", "train-dataset-unknown-name", "train-model-is-a-preset",
    "export-run-dir-missing", "export-no-adapter", "export-unknown-dtype", "export-base-other-shapes",
    "export-out-dir-not-empty", "export-adapter-truncated", "export-adapter-huge-header", "export-base-header-list",
    "export-base-entry-not-object", "export-base-no-data-offsets", "export-out-dir-symlink",
    "estimate-unknown-preset", "estimate-zero-nodes", "estimate-malformed-model-config",
    "count-unknown-preset", "count-zero-tensor-rank",
    "generate-run-dir-missing", "generate-neither-run-nor-model", "generate-zero-new-tokens",
    "generate-temperature-nan", "generate-adapter-truncated",
    "slurm-model-missing", "slurm-ds-config-malformed", "slurm-zero-gpus-per-node",
]
# docs/bad_input.md lists every case with its message; LORETTA_WRITE_BAD_INPUT_DOC=1 rewrites it.
DOC = REPO / "docs" / "bad_input.md"


def launcher_env(case: Case) -> dict:
    env = {k: v for k, v in clean_env().items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    for key in ("MODEL", "DATA", "METHOD", "OUTPUT_DIR", "DS_CONFIG", "GPUS_PER_NODE", "EXTRA_ARGS", "DRY_RUN",
                "LORETTA_ROOT", "LORETTA_HOSTLIST"):
        env.pop(key, None)
    env.update(case.env)
    return env


def execute(case: Case, cwd: Path, server: CliForkServer) -> Outcome:
    cwd.mkdir(parents=True, exist_ok=True)
    before = snapshot(case.watched)
    if case.command[:3] == cli()[:3]:  # `python -m loretta_ds.cli ...`: a child of the preloaded interpreter
        status, stdout, stderr, seconds = server.run(case.command[3:], cwd, launcher_env(case))
    else:
        started = time.monotonic()
        done = subprocess.run(case.command, cwd=cwd, env=launcher_env(case), capture_output=True, text=True,
                              timeout=300)
        status, stdout, stderr, seconds = done.returncode, done.stdout, done.stderr, time.monotonic() - started
    return Outcome(status, stdout, stderr, seconds, before, snapshot(case.watched))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    ws = Workspace(tmp_path_factory.mktemp("bad-input"))
    cases = build_cases(ws)
    assert sorted(cases) == sorted(CASE_NAMES + ["train-debug-shows-traceback"])
    with CliForkServer(launcher_env(Case([], (), ws.root))) as server:
        results = {name: execute(case, ws.root / "cwd" / name, server) for name, case in cases.items()}
    width = max(map(len, results))
    print("\n" + "\n".join(f"  {name:<{width}} {r.seconds:5.1f} s  exit {r.status}" for name, r in results.items()))
    return {name: (cases[name], outcome) for name, outcome in results.items()}


def message_of(case: Case, outcome: Outcome) -> str:
    lines = [line for line in (outcome.stdout + outcome.stderr).splitlines() if line.strip()]
    if case.launcher_error:
        problems = [line for line in lines if line.startswith("[launch] ERROR: ")
                    and "nothing was started" not in line]
        assert len(problems) == 1, lines
        assert any("nothing was started" in line for line in lines), lines
        return problems[0]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, outcome.stderr[-3000:]
    # One paragraph: the message is the last thing printed, on its own single line.
    assert outcome.stderr.rstrip().splitlines()[-1] == errors[0], outcome.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_clear_message_and_nothing_written(outcomes, name):
    case, outcome = outcomes[name]
    assert outcome.status != 0
    if not case.launcher_error:
        assert outcome.status == 2, outcome.stderr[-3000:]  # user errors exit 2, failures 1
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr[-3000:]
    message = message_of(case, outcome)
    for fragment in case.fragments:
        assert fragment in message, message
    assert outcome.after == outcome.before, f"{case.watched} was written"
    assert outcome.seconds < CASE_TIME_LIMIT_S


def test_debug_shows_the_traceback(outcomes):
    case, outcome = outcomes["train-debug-shows-traceback"]
    assert outcome.status != 0
    assert "Traceback" in outcome.stderr and "keep_last must be an integer >= 1" in outcome.stderr
    assert outcome.after is None


def anonymized(text: str) -> str:
    """Paths of the test's workspace as WORK/..., the interpreter as python, for the docs."""
    text = re.sub(r"/\S*?/bad-input\d*/", "WORK/", text)
    return text.replace(sys.executable, "python").replace(str(REPO) + "/", "")


def case_input(case: Case) -> str:
    if case.launcher_error:
        changed = {k: v for k, v in case.env.items() if k in ("MODEL", "DS_CONFIG", "GPUS_PER_NODE")
                   and v != ZERO3_OFFLOAD}
        shown = " ".join(f"{k}={v}" for k, v in changed.items()) + " bash slurm/_launch.sh run (DRY_RUN=1)"
    else:
        shown = "loretta-ds " + " ".join(case.command[3:])
    return anonymized(shown).replace("|", "\\|")


def test_the_docs_list_every_case_with_its_message(outcomes):
    """docs/bad_input.md holds one line per case (input, message); it cannot miss a case or list
    one that is gone. LORETTA_WRITE_BAD_INPUT_DOC=1 rewrites it from this run's messages."""
    if os.environ.get("LORETTA_WRITE_BAD_INPUT_DOC") == "1":
        rows = []
        for name in CASE_NAMES:
            case, outcome = outcomes[name]
            message = anonymized(message_of(case, outcome)).replace("|", "\\|")
            rows.append(f"| `{name}` | `{case_input(case)}` | {message} |")
        DOC.write_text(DOC_HEADER + "\n".join(rows) + "\n")
    listed = re.findall(r"^\| `([a-z0-9_-]+)` \|", DOC.read_text(), re.M)
    assert sorted(listed) == sorted(CASE_NAMES), "docs/bad_input.md is out of date: rerun with LORETTA_WRITE_BAD_INPUT_DOC=1"
    assert len(listed) >= 45


DOC_HEADER = """# Bad input: what each command answers

Every case below is run by `tests/test_reliability_bad_input.py` as a real command line: it must
exit 2 (the SLURM helper: 1, with its `[launch] ERROR:` line and "nothing was started"), print one
message naming the problem and the fix, show no traceback (unless `--debug`), fail before any
model loads, and write nothing. `WORK/` is the test's scratch directory. Regenerate this page with
`LORETTA_WRITE_BAD_INPUT_DOC=1 python -m pytest -q tests/test_reliability_bad_input.py`.

| case | input | message |
|---|---|---|
"""


@pytest.mark.multiprocess
def test_two_ranks_print_the_error_once(tmp_path):
    """Under the deepspeed launcher both ranks fail the same check; only rank 0 says so."""
    out = tmp_path / "run"
    launcher = shutil.which("deepspeed")
    head = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    done = subprocess.run([*head, "--num_gpus", "2", "--master_port", str(free_port()), TRAIN,
                           "--output_dir", str(out), "--seq_len", "4096"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.count("error: --seq_len 4096 is longer than the model's maximum") == 1, output[-3000:]
    assert "Traceback" not in output
    assert not out.exists()
