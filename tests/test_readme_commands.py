"""Every command README.md shows, and the docs pages that carry the README's former sections
(DOCS), run as written where this machine can run it.

The commands are taken from those pages themselves: each line of its ```bash blocks (backslash
continuations joined, a trailing `# comment` dropped), the lines of its untagged code blocks that
start with a command, and every inline `code` span that starts with one (``pip``, ``python``,
``loretta-ds`` ..., after any VAR=value prefix). ```python blocks are API examples, not commands.

Each command is classified below: RUNS_HERE (run by a test here, as written, in a shell, with
``loretta-ds`` and ``python`` resolving to this checkout) or CANNOT_RUN_HERE (with the reason, and
where it is exercised instead). A command added to the README without a classification, or a
classification whose command left the README, fails test_every_readme_command_is_classified: the
README stays true.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The README and the pages its sections moved to: every command a user is told to run there is checked.
DOCS = [README] + [REPO / "docs" / name for name in ("training.md", "data.md", "results.md", "contributing.md")]


def docs_text() -> str:
    return "\n\n".join(path.read_text() for path in DOCS)

# The programs a command line of the README starts with (after VAR=value assignments).
LAUNCHERS = ("pip", "python", "python3", "deepspeed", "loretta-ds", "bash", "sbatch", "srun")

MAIN_JOB = ("pip install torch==2.13.0 -e . && deepspeed --num_gpus 2 launch/train.py "
            "--ds_config ds_configs/zero3_offload.json --output_dir runs/demo")
TEST_INSTALL = 'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q -ra -n 2'
COUNT = "loretta-ds count --model llama2-70b --method rep"
ESTIMATE = ("loretta-ds estimate --model llama2-70b --method rep --nodes 4 --gpus_per_node 8 "
            "--offload param+optimizer --bf16 --seq_len 4096 --gpu_memory 80")
TRAIN_HELP = "loretta-ds train --help"
HELP = "loretta-ds --help"
SLURM_DRY_RUN = "DRY_RUN=plan SLURM_JOB_NODELIST='gpu[01-04]' bash slurm/llama2_70b.sh"
EXPORTS = ["loretta-ds export runs/7b runs/7b-merged",
           "loretta-ds export runs/7b runs/7b-peft --format peft-lora",
           "loretta-ds export runs/7b runs/7b-adapter --format adapter"]
GENERATES = ['loretta-ds generate runs/7b --prompt "Summarize: ..."',
             'loretta-ds generate runs/7b-merged --prompt "..." --sample --seed 1']
# HF_HUB_OFFLINE=1: the model's config comes from the local cache at once; without it, a machine that
# cannot reach the hub retries for about 30 s before reading that cache.
PLAN = "HF_HUB_OFFLINE=1 loretta-ds plan --world_size 16 --config run.yaml"

# Commands a test below runs as written: command -> the test that runs it.
RUNS_HERE = {
    COUNT: "test_quick_commands_run_as_written",
    ESTIMATE: "test_quick_commands_run_as_written",
    TRAIN_HELP: "test_quick_commands_run_as_written",
    HELP: "test_quick_commands_run_as_written",
    SLURM_DRY_RUN: "test_quick_commands_run_as_written",
    **{command: "test_export_and_generate_on_a_trained_run" for command in EXPORTS + GENERATES},
    PLAN: "test_plan_of_the_readme_run_yaml",
}

# Commands this machine (2 CPU cores, no GPU, no model hub, shared) cannot run, and why.
CANNOT_RUN_HERE = {
    MAIN_JOB: "the main job: .ci/main_job.sh runs it verbatim in a fresh venv (CI stage 1); "
              "test_ci_runs_the_main_job_and_the_test_install checks it takes this very line",
    TEST_INSTALL: "the test install: .ci/run runs it verbatim (CI stage 2); it is this test suite",
    'pip install -e ".[flash]"': "builds flash-attn, which needs CUDA (no GPU here); and it would change "
                                 "this environment",
    "pip install .": "installs into this environment; tests/test_fresh_install.py installs the wheel into "
                     "a fresh venv and trains from it (-m multiprocess)",
    "deepspeed --num_gpus 2 $(which loretta-ds) train ...": "a form ('...' = a run's flags); "
                                                            "tests/test_fresh_install.py runs it with the "
                                                            "console script (-m multiprocess)",
    "deepspeed launch/train.py --ds_config ds_configs/zero3_offload.json --model meta-llama/Llama-2-7b-hf "
    "--dataset data.jsonl --method rep --bf16 --output_dir runs/7b":
        "needs the LLaMA-2-7B checkpoint (model hub: no network here), a data.jsonl and GPUs; "
        "test_export_and_generate_on_a_trained_run trains the built-in model into runs/7b instead",
    "deepspeed launch/train.py --ds_config auto --model meta-llama/Llama-2-7b-hf "
    "--dataset data.jsonl --method rep --bf16 --output_dir runs/7b":
        "the same cluster line with the layout chosen for the GPUs it runs on (no GPU or model hub here); "
        "tests/test_layout.py trains the built-in model with --ds_config auto (-m multiprocess)",
    'pip install -e ".[qlora]"': "installs into this environment; the dev extra pulls bitsandbytes, and "
                                 "tests/test_quantization.py trains on a 4-bit base",
    "loretta-ds train ...": "a form of the cluster line above ('...' = its flags)",
    "python launch/train.py ...": "a form of the cluster line above ('...' = its flags); "
                                  "test_export_and_generate_on_a_trained_run runs launch/train.py",
    "MODEL=/models/Llama-2-70b-hf DATA=data.jsonl sbatch slurm/llama2_70b.sh":
        "needs a SLURM cluster with 4 x 8 GPUs and the 70B checkpoint; tests/test_slurm_cluster.py "
        "submits the same launcher (slurm/tiny_cpu.sh, slurm/tiny_cpu_2node.sh) to a real two-node cluster (-m slurm)",
    "bash .ci/slurm_tests.sh": "starts SLURM daemons as root (and installs them): CI's job, not a test's",
    ".ci/slurm_cluster.sh": "named as what starts the two-node cluster (root, network namespaces): CI's job",
    "python -m pytest -q -ra -n 2": "the fast tier: this test suite itself (CI stage 2 runs it through the test install)",
    'python -m pytest -m "slow or multiprocess"': "the other tiers of this suite: .ci/run runs them (CI stage 3)",
    ".ci/run": "CI itself (the main job, the SLURM cluster, the whole test suite)",
    ".ci/main_job.sh": "CI stage 1: the main job in a fresh venv (minutes of both cores)",
    "python -m benchmarks.bench --clock cpu --steps 20 --warmup 2 --train_norms false "
    "--contenders floor,rep,adp,lora,adapter,ref_rep,ref_adp --out_dir benchmarks/results/cpu_like_for_like":
        "a benchmark: minutes of both cores, and its figures mean something only on an idle machine; "
        "tests/test_bench.py runs the same entry point at tiny sizes",
    "python -m benchmarks.bench --layer --steps 300 --out_dir benchmarks/results/cpu_layer --stem bench":
        "a benchmark (as above); tests/test_bench.py runs --layer at tiny sizes",
    "TRAIN_NORMS=false OUT=docs/gpu_bench_h200_no_norms.md bash benchmarks/gpu.sh": "needs a CUDA GPU",
    "OUT=docs/gpu_bench_h200.md bash benchmarks/gpu.sh": "needs a CUDA GPU",
    "python launch/train.py": "named as the one-process form (it picks a free rendezvous port itself); "
                              "test_export_and_generate_on_a_trained_run runs launch/train.py",
    "REPEATS=2 WARMUP=2 MEASURE=6 MICRO_BATCH=4 bash benchmarks/packing.sh":
        "a benchmark: alternating two-process ZeRO-3 runs, tens of minutes; tests/test_packing.py "
        "trains packed and padded runs through the same trainer",
    "REPEATS=3 WARMUP=2 MEASURE=6 bash benchmarks/throughput.sh":
        "a benchmark: 13 two-process ZeRO-3 runs, about 10 minutes of both cores; "
        "tests/test_bench_throughput.py runs its HF Trainer contender under 2-process ZeRO-3 and checks the report",
    "python benchmarks/quality.py":
        "a benchmark: 18 training runs of SmolLM2-135M, about an hour of both cores; "
        "tests/test_bench_quality_data.py checks its tasks, tests/test_real_model.py trains the same model",
    'REPEATS=3 METHODS="rep rep_tt lora" bash benchmarks/smollm2_speed.sh':
        "a benchmark: 9 two-process ZeRO-3 runs of SmolLM2-135M, about 10 minutes of both cores; "
        "tests/test_real_model.py runs the same model and config",
    'TRAIN_NORMS=false METHODS="rep lora" MEASURE=10 REPEATS=6 bash benchmarks/comm.sh':
        "a benchmark: 12 two-process ZeRO-3 runs, tens of minutes; tests/test_bench_comm.py runs "
        "benchmarks/comm.sh small (-m multiprocess)",
}


# --------------------------------------------------------------------------- extraction

def _program(command: str) -> str:
    """The first word after VAR=value assignments ('' when there is none)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    words = [w for w in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]
    return words[0] if words else ""


def _looks_like_command(text: str) -> bool:
    program = _program(text)
    return program in LAUNCHERS or program.startswith((".ci/", "./"))


def _strip_comment(line: str) -> str:
    """Drop a trailing shell comment (`cmd  # what it does`), keeping '#' inside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _block_commands(body: str) -> list[str]:
    """Logical lines of a code block: backslash continuations joined, comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    return [c for c in (_strip_comment(line).strip() for line in joined.splitlines()) if c]


def readme_commands(text: str) -> list[str]:
    """Every command README.md shows, in order of appearance."""
    commands: list[str] = []
    fence = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
    for match in fence.finditer(text):
        language, body = match.group(1), match.group(2)
        if language in ("bash", "sh", "shell", "console"):
            commands += _block_commands(body)
        elif language == "":
            commands += [c for c in _block_commands(body) if _looks_like_command(c)]
    prose = fence.sub("", text)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())  # a span may wrap over a line break
        if _looks_like_command(span):
            commands.append(span)
    return list(dict.fromkeys(commands))


def test_extraction_finds_blocks_continuations_and_inline_commands():
    """The extractor on a small README: it cannot pass by finding nothing."""
    text = ("Intro `pip install .` and `--flag` and `a/path`.\n\n```bash\nA=1 loretta-ds x \\\n"
            "    --y 2   # note\nbash s.sh\n```\n\n```\nloretta_ds/tt/  maths\npython -m m --z\n```\n\n"
            "```python\nimport loretta_ds\n```\nWrapped `python -m m\n--k 1` here.\n")
    assert readme_commands(text) == ["A=1 loretta-ds x --y 2", "bash s.sh", "python -m m --z",
                                     "pip install .", "python -m m --k 1"]


def test_every_readme_command_is_classified():
    found = readme_commands(docs_text())
    assert COUNT in found and SLURM_DRY_RUN in found, "the extractor missed known commands"
    classified = {**RUNS_HERE, **CANNOT_RUN_HERE}
    assert not set(RUNS_HERE) & set(CANNOT_RUN_HERE)
    new = [c for c in found if c not in classified]
    assert not new, ("README.md shows commands this test neither runs nor explains; add each to RUNS_HERE "
                     "(and run it) or CANNOT_RUN_HERE (with the reason):\n" + "\n".join(new))
    gone = [c for c in classified if c not in found]
    assert not gone, "classified commands that README.md no longer shows (remove them):\n" + "\n".join(gone)


def test_ci_runs_the_main_job_and_the_test_install():
    """The two commands skipped as CI's own are really the ones CI runs verbatim."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks[0].strip() == MAIN_JOB  # .ci/main_job.sh takes the first ```bash block as written
    assert "awk '/^```bash$/" in (REPO / ".ci" / "main_job.sh").read_text()
    assert TEST_INSTALL in (REPO / ".ci" / "run").read_text()


# --------------------------------------------------------------------------- running

def shell_env(tmp_path: Path) -> dict[str, str]:
    """This environment with `loretta-ds` and `python` on PATH resolving to this checkout, and no
    SLURM job or launcher variables (the test may itself run inside a job)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "loretta-ds"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m loretta_ds.cli "$@"\n')
    shim.chmod(0o755)
    # A script, not a symlink: a symlinked venv python outside the venv finds no pyvenv.cfg and runs
    # as the base Python, without this environment's packages.
    for name in ("python", "python3"):
        if not (bin_dir / name).exists():
            (bin_dir / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            (bin_dir / name).chmod(0o755)
    drop = ("MODEL", "DATA", "METHOD", "OUTPUT_DIR", "DS_CONFIG", "GPUS_PER_NODE", "EXTRA_ARGS", "DRY_RUN",
            "MASTER_PORT", "MASTER_ADDR", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LORETTA_ROOT", "LORETTA_HOSTLIST")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("SLURM_JOB", "SLURM_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                                                    "SLURM_LOCALID", "SLURM_STEP", "SLURM_RESTART", "SBATCH_",
                                                    "SRUN_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO))
    return env


def run_as_written(command: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def readme_table_value(row_label: str, column: int) -> str:
    """A cell of README.md's 'What you get' table, by the row's first words and column index."""
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(row_label):
            return cells[column]
    raise AssertionError(f"no table row {row_label!r} in README.md")


def check_count(res: subprocess.CompletedProcess, cwd: Path) -> None:
    figure = readme_table_value("LoRETTA_rep", 3)  # the LLaMA-2-70B column: the README's claim
    assert re.search(rf"^  trainable\s+{re.escape(figure)}\s", res.stdout, re.M), res.stdout


def check_estimate(res: subprocess.CompletedProcess, cwd: Path) -> None:
    assert "llama2-70b: LoRETTA_rep, 4 node(s) x 8 GPU(s) = 32, ZeRO-3, offload param+optimizer" in res.stdout
    # README.md states this line's verdict and figures ("does not fit on 80 GiB (102.9 GiB ...); with
    # gradient checkpointing 8.5 GiB"): the output must still say so, or the README must change.
    assert "verdict: does NOT fit on one 80 GiB GPU: 102.87 GiB per GPU" in res.stdout, res.stdout
    assert "the total to 9.28 GiB per GPU (fits on 80 GiB)" in res.stdout, res.stdout
    readme = " ".join(docs_text().split())
    assert "does not fit on 80 GiB (102.9 GiB, 98% activations); with gradient checkpointing 9.3 GiB" in readme


def check_train_help(res: subprocess.CompletedProcess, cwd: Path) -> None:
    assert res.stdout.startswith("usage: loretta-ds train")
    assert "--target_modules" in res.stdout and "--resume" in res.stdout


def check_help(res: subprocess.CompletedProcess, cwd: Path) -> None:
    assert res.stdout.startswith("usage: loretta-ds")
    assert all(name in res.stdout for name in ("train", "count", "export", "generate", "estimate"))


def check_slurm_dry_run(res: subprocess.CompletedProcess, cwd: Path) -> None:
    assert "WORLD_SIZE=32 (4 node(s) x GPUS_PER_NODE=8)" in res.stdout
    assert "gpu01 gpu02 gpu03 gpu04" in res.stdout and "rank 31 on gpu04" in res.stdout
    if not Path("/models/Llama-2-70b-hf").exists():  # the script's default MODEL
        assert "WARNING: MODEL=/models/Llama-2-70b-hf does not exist on this machine" in res.stderr
    # The dry run's plan names OUTPUT_DIR=runs/llama2-70b-dryrun; it must not create it (runs/ itself
    # may exist already: CI's main job, or the user's own earlier runs, write there).
    assert not (cwd / "runs" / "llama2-70b-dryrun").exists(), "a dry run must not create its output dir"


QUICK = {COUNT: check_count, ESTIMATE: check_estimate, TRAIN_HELP: check_train_help, HELP: check_help,
         SLURM_DRY_RUN: check_slurm_dry_run}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(QUICK))
def test_quick_commands_run_as_written(command, tmp_path):
    # The SLURM line names a script of the checkout: it runs from the checkout's root, as the
    # README's user would. The others run from an empty directory, which they must leave empty.
    cwd = REPO if command == SLURM_DRY_RUN else tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    before = tree_listing(cwd / "runs")
    res = run_as_written(command, cwd, shell_env(tmp_path), timeout=300)
    assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    QUICK[command](res, cwd)
    assert tree_listing(cwd / "runs") == before, f"{command} wrote under runs/"
    if cwd != REPO:
        assert not any(cwd.iterdir()), f"{command} wrote {sorted(p.name for p in cwd.iterdir())}"


def tree_listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.slow
def test_dry_run_checks_paths_unless_asked_for_the_plan_only(tmp_path):
    """DRY_RUN=1 (the check before sbatch) refuses the README's missing MODEL and names DRY_RUN=plan;
    DRY_RUN=plan still refuses what is wrong anywhere, such as a DeepSpeed config that is not there."""
    env = shell_env(tmp_path)
    missing = tmp_path / "no-such-model"
    checked = run_as_written(f"MODEL={missing} DRY_RUN=1 SLURM_JOB_NODELIST='gpu[01-04]' bash slurm/llama2_70b.sh",
                             REPO, env)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"MODEL={missing} does not exist" in checked.stderr and "DRY_RUN=plan" in checked.stderr
    assert "[launch] srun:" not in checked.stdout
    planned = run_as_written(f"MODEL={missing} DRY_RUN=plan DS_CONFIG=nope.json bash slurm/llama2_70b.sh", REPO, env)
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "DS_CONFIG=nope.json not found" in planned.stderr and "[launch] srun:" not in planned.stdout


@pytest.mark.multiprocess  # a real DeepSpeed training process, then seven CLI command lines
def test_export_and_generate_on_a_trained_run(tmp_path):
    """The README's export and generate lines, as written, on a run in runs/7b: the built-in model
    trained here for a few steps, since the README's 7B run needs a GPU cluster. The `loretta-ds`
    lines run as forked children of one preloaded interpreter (tests/cli_forkserver.py: each is its
    own process with the line's arguments, as shlex splits them, but without importing torch again)."""
    from cli_forkserver import CliForkServer

    env = shell_env(tmp_path)
    cwd = tmp_path / "work"
    cwd.mkdir()
    train = (f"python {shlex.quote(str(REPO / 'launch' / 'train.py'))} --ds_config zero3 --max_steps 4 "
             "--save_every 0 --eval_every 0 --eval_batches 1 --seq_len 48 --micro_batch_size 2 --export false "
             "--output_dir runs/7b")
    res = run_as_written(train, cwd, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    def loretta_ds(command: str) -> str:
        program, *argv = shlex.split(command)
        assert program == "loretta-ds", command
        status, stdout, stderr, _ = server.run(argv, cwd, env)
        assert status == 0, f"{command}\n{stdout[-3000:]}\n{stderr[-3000:]}"
        return stdout

    outputs = {EXPORTS[0]: "runs/7b-merged/config.json",
               EXPORTS[1]: "runs/7b-peft/adapter_model.safetensors",
               EXPORTS[2]: "runs/7b-adapter/adapter.safetensors"}
    with CliForkServer(env, cwd) as server:
        for command in EXPORTS:
            loretta_ds(command)
            assert (cwd / outputs[command]).is_file(), f"{command}: no {outputs[command]}"
        for command in GENERATES:
            stdout = loretta_ds(command)
            prompt = shlex.split(command)[shlex.split(command).index("--prompt") + 1]
            assert f">>> {prompt}\n" in stdout, stdout
            assert stdout.split(f">>> {prompt}\n", 1)[1].strip(), f"{command}: no completion"
        # On this trained run, base + adapter and its merged export give the same greedy text.
        greedy = {}
        for target in ("runs/7b", "runs/7b-merged"):
            stdout = loretta_ds(f'loretta-ds generate {target} --prompt "the film was" --max_new_tokens 12')
            greedy[target] = stdout.split(">>> the film was\n", 1)[1].strip()
    assert greedy["runs/7b"] == greedy["runs/7b-merged"] != "", greedy


def readme_yaml_block() -> str:
    blocks = re.findall(r"^```yaml\n(.*?)^```", docs_text(), re.S | re.M)
    assert len(blocks) == 1, "README.md and DOCS should show one run.yaml"
    return blocks[0]


def stand_in_hub_cache(root: Path, repo_id: str) -> Path:
    """A Hugging Face cache holding ``repo_id`` as LLaMA-2-7B's config.json (its real shapes) with the
    built-in tokenizer: all `plan` reads of a model (it never loads weights)."""
    from loretta_ds.models import load_model_config
    from loretta_ds.tiny_llama import ensure_tiny_llama

    snapshot = root / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "hub" / f"models--{repo_id.replace('/', '--')}" / "refs").mkdir()
    (root / "hub" / f"models--{repo_id.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    load_model_config("llama2-7b").save_pretrained(snapshot)
    tiny = ensure_tiny_llama()
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (snapshot / name).write_bytes((tiny / name).read_bytes())
    return root


@pytest.mark.slow  # a 7B model on the meta device and the data's tokenization: seconds, in a subprocess
def test_plan_of_the_readme_run_yaml(tmp_path):
    """The README's run.yaml (adapter: block, tt_shapes for LLaMA-2-7B's shapes) and its plan line, as
    written: the model id resolves to a stand-in with LLaMA-2-7B's config, data.jsonl is written here."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "run.yaml").write_text(readme_yaml_block())
    (cwd / "data.jsonl").write_text("".join(
        json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f" {2 * i}"}) + "\n"
        for i in range(40)))
    env = shell_env(tmp_path)
    env.update(HF_HOME=str(stand_in_hub_cache(tmp_path / "hf", "meta-llama/Llama-2-7b-hf")), HF_HUB_OFFLINE="1")
    res = run_as_written(PLAN, cwd, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "adp on gate_proj,up_proj,down_proj" in res.stdout, res.stdout
    assert "world size 16: global batch 16 = micro batch 1 x grad accum 1 x 16 process(es)" in res.stdout
    assert "lr 0.001" in res.stdout  # YAML's 1e-3, which PyYAML reads as text, is the number meant
    # The adapter block's tt_shapes took effect: the plan counts what count counts with the same flags.
    counted = run_as_written("loretta-ds count --model llama2-7b --method adp --bottleneck 32 --activation gelu "
                             "--adapter_scaling 0.5 --target_modules mlp --tt_shapes gate_proj.down=8x8x8x8x8x4",
                             cwd, env)
    trainable = re.search(r"^  trainable\s+([\d,]+)", counted.stdout, re.M).group(1)
    assert f", {trainable} trainable parameters" in res.stdout, (trainable, res.stdout)
    assert not (cwd / "runs").exists(), "plan wrote an output directory"


def test_tested_versions_are_the_lower_bounds_of_every_runtime_dependency():
    """docs/contributing.md's "Tested versions" (the one place they are listed) names each runtime dependency at the version pyproject.toml takes
    as its lower bound, and the upper bound is the next minor release (none is left unbounded)."""
    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    tested = re.search(r"Tested versions.*?:(.*?)\n\n", (REPO / "docs" / "contributing.md").read_text() + "\n",
                       re.S).group(1)
    for requirement in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([\d.]+),<([\d.]+)", requirement)
        assert match, f"{requirement!r} is not bounded as NAME>=LOW,<NEXT_MINOR"
        name, low, high = match.groups()
        major, minor = low.split(".")[:2]
        assert high == f"{major}.{int(minor) + 1}", f"{requirement}: the upper bound is not the next minor"
        assert re.search(rf"\b{re.escape(name)} {re.escape(low)}\b", tested, re.I), \
            f"README's tested versions do not name {name} {low}"
