"""The SLURM launch scripts without a cluster: DRY_RUN plans and input validation.

Each test runs the real sbatch scripts with bash (their #SBATCH lines are comments then), so the
whole chain llama2_*.sh -> _launch.sh is exercised (each run also starts the batch check,
`loretta-ds plan --check batch`, a Python process).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "slurm"
MODEL_SCRIPTS = ["llama2_7b.sh", "llama2_13b.sh", "llama2_70b.sh", "tiny_cpu.sh"]


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without SLURM job variables (pytest may itself run inside a job)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))
           and k not in ("MODEL", "DATA", "METHOD", "OUTPUT_DIR", "DS_CONFIG", "GPUS_PER_NODE",
                         "EXTRA_ARGS", "MASTER_PORT", "MASTER_ADDR", "DRY_RUN", "LORETTA_ROOT",
                         "LORETTA_HOSTLIST")}
    env.update(overrides)
    return env


def run_script(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_DIR / script)], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=120)


def write_ds_config(path: Path, **values) -> Path:
    cfg = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    cfg.update(values)
    path.write_text(json.dumps(cfg))
    return path


def sbatch_header(script: str) -> dict[str, str]:
    """The `#SBATCH --key=value` lines of a script (comments after the value dropped)."""
    header = {}
    for line in (SLURM_DIR / script).read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            header[m.group(1)] = m.group(2) or ""
    return header


def parse_plan(stdout: str) -> dict:
    """The dry-run plan as data: nodes, master, world size, per-node commands, per-rank env."""
    plan = {"node_cmds": {}, "ranks": {}}
    for line in stdout.splitlines():
        if m := re.match(r"\[launch\] node list: (\S+) -> (.*) \((\d+) node\(s\), expanded with (\w+)\)",
                         line):
            plan["nodelist"], plan["hosts"] = m.group(1), m.group(2).split()
            plan["nnodes"], plan["expander"] = int(m.group(3)), m.group(4)
        elif m := re.match(r"\[launch\] master: MASTER_ADDR=(\S+) MASTER_PORT=(\d+)", line):
            plan["master_addr"], plan["master_port"] = m.group(1), int(m.group(2))
        elif m := re.match(r"\[launch\] world size: WORLD_SIZE=(\d+)", line):
            plan["world_size"] = int(m.group(1))
        elif m := re.match(r"\[launch\] srun: (.*)", line):
            plan["srun"] = m.group(1)
        elif m := re.match(r"\[launch\] node (\S+) \(node rank (\d+)\): cd (\S+) && (.*)", line):
            plan["node_cmds"][m.group(1)] = (int(m.group(2)), m.group(4))
        elif m := re.match(r"\[launch\]   rank (\d+) on (\S+): (.*)", line):
            env = dict(kv.split("=", 1) for kv in m.group(3).split())
            plan["ranks"][int(m.group(1))] = (m.group(2), env)
    return plan


def expected_hosts(nodelist: str) -> list[str]:
    return {
        "gpu[01-04]": ["gpu01", "gpu02", "gpu03", "gpu04"],
        "node[1-2,5]": ["node1", "node2", "node5"],
        "a01,b02": ["a01", "b02"],
        "rack[1-2]-n[08-10]": ["rack1-n08", "rack1-n09", "rack1-n10",
                               "rack2-n08", "rack2-n09", "rack2-n10"],
        "gpu[098-101],login7": ["gpu098", "gpu099", "gpu100", "gpu101", "login7"],
    }[nodelist]


def minimal_slurm_conf(tmp_path: Path) -> Path:
    """A config that `scontrol show hostnames` can parse; no daemon is needed for it."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=dryrun\nSlurmctldHost=localhost\nNodeName=localhost\n"
                    "PartitionName=p Nodes=localhost Default=YES\n")
    return conf


def expander_env(expander: str, tmp_path: Path) -> dict[str, str]:
    if expander == "python":
        return {"LORETTA_HOSTLIST": "python"}
    if shutil.which("scontrol") is None:
        pytest.skip("scontrol not installed (.ci/slurm_cluster.sh start installs it)")
    return {"LORETTA_HOSTLIST": "scontrol", "SLURM_CONF": str(minimal_slurm_conf(tmp_path))}


@pytest.mark.parametrize("expander", ["python", "scontrol"])
@pytest.mark.parametrize("nodelist", ["gpu[01-04]", "node[1-2,5]", "a01,b02", "rack[1-2]-n[08-10]",
                                      "gpu[098-101],login7"])
def test_dry_run_plan_for_multi_node_lists(tmp_path, nodelist, expander):
    hosts = expected_hosts(nodelist)
    per_node = 8
    world = len(hosts) * per_node
    ds = write_ds_config(tmp_path / "ds.json", train_batch_size=2 * world,
                         train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=2)
    out_dir = tmp_path / "out"
    res = run_script("llama2_13b.sh", tmp_path, DRY_RUN="1", SLURM_JOB_NODELIST=nodelist,
                     GPUS_PER_NODE=str(per_node), DS_CONFIG=str(ds), OUTPUT_DIR=str(out_dir),
                     MODEL="meta-llama/Llama-2-13b-hf", DATA="sentiment",
                     EXTRA_ARGS="--lr 3e-4 --max_steps 7", **expander_env(expander, tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)

    assert plan["expander"] == expander
    assert plan["hosts"] == hosts and plan["nnodes"] == len(hosts)
    assert plan["master_addr"] == hosts[0]
    assert plan["world_size"] == world
    assert f"--nodes={len(hosts)}" in plan["srun"] and f"--ntasks={world}" in plan["srun"]
    assert f"--ntasks-per-node={per_node}" in plan["srun"]

    # One command per node, the same on each, with every input in place.
    assert list(plan["node_cmds"]) == hosts
    expected_cmd = (f"python3 {REPO}/launch/train.py --ds_config {ds} "
                    f"--model meta-llama/Llama-2-13b-hf --dataset sentiment --method rep "
                    f"--output_dir {out_dir} --resume auto --lr 3e-4 --max_steps 7")
    for node_rank, host in enumerate(hosts):
        assert plan["node_cmds"][host] == (node_rank, expected_cmd)

    # Per-rank environment: ranks in blocks of GPUS_PER_NODE per node, in node order.
    assert sorted(plan["ranks"]) == list(range(world))
    for rank, (host, env) in plan["ranks"].items():
        assert host == hosts[rank // per_node]
        assert env == {"RANK": str(rank), "LOCAL_RANK": str(rank % per_node),
                       "WORLD_SIZE": str(world), "MASTER_ADDR": hosts[0],
                       "MASTER_PORT": str(plan["master_port"])}
    assert not out_dir.exists(), "a dry run must not create anything"


@pytest.mark.parametrize("script", MODEL_SCRIPTS)
def test_dry_run_matches_sbatch_header(tmp_path, script):
    """Without a node list each script plans for the nodes and tasks its header asks for."""
    header = sbatch_header(script)
    nodes, per_node = int(header["nodes"]), int(header["ntasks-per-node"])
    ds = write_ds_config(tmp_path / "ds.json", train_batch_size="auto",
                         train_micro_batch_size_per_gpu="auto")
    res = run_script(script, tmp_path, DRY_RUN="1", DS_CONFIG=str(ds), MODEL="tiny-llama",
                     LORETTA_HOSTLIST="python")
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    assert plan["nnodes"] == nodes
    assert plan["world_size"] == nodes * per_node
    assert len(plan["node_cmds"]) == nodes and len(plan["ranks"]) == nodes * per_node


@pytest.mark.parametrize("script", MODEL_SCRIPTS)
def test_sbatch_headers_support_preemption(script):
    header = sbatch_header(script)
    assert "requeue" in header
    assert header["open-mode"] == "append"
    assert "%j" in header["output"]
    assert re.fullmatch(r"B:USR1@\d+", header["signal"])
    if script.startswith("llama2"):
        assert header["gpus-per-node"] == header["ntasks-per-node"] == "8"
        text = (SLURM_DIR / script).read_text()
        assert "--account" in text and "--partition" in text and "<-- SET ME" in text


def test_header_sizes_per_model():
    assert [int(sbatch_header(s)["nodes"]) for s in MODEL_SCRIPTS] == [1, 2, 4, 1]
    assert int(sbatch_header("tiny_cpu.sh")["ntasks-per-node"]) == 2
    assert "gpus-per-node" not in sbatch_header("tiny_cpu.sh")


@pytest.mark.parametrize("script", MODEL_SCRIPTS + ["tiny_cpu_2node.sh"])
def test_scripts_default_to_the_auto_layout_and_still_check_the_batch(tmp_path, script):
    """Without DS_CONFIG every script lets the trainer choose the layout (--ds_config auto); the
    launcher's batch check still runs the trainer's rule for the job's process count."""
    header = sbatch_header(script)
    world = int(header["nodes"]) * int(header["ntasks-per-node"])
    res = run_script(script, tmp_path, DRY_RUN="1", MODEL="tiny-llama", LORETTA_HOSTLIST="python")
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    assert " --ds_config auto " in plan["srun"]
    assert all(" --ds_config auto " in cmd for _, cmd in plan["node_cmds"].values())
    assert re.search(rf"\[launch\] batch: global batch \d+ = micro batch \d+ x grad accum \d+ x {world} process",
                     res.stdout), res.stdout


def test_auto_layout_batch_flags_are_checked_before_the_job_starts(tmp_path):
    res, out_dir = run_bad(tmp_path, False, DS_CONFIG="auto", EXTRA_ARGS="--micro_batch_size 0")
    assert_refused(res, out_dir, "micro_batch_size must be an integer >= 1, got 0",
                   "the batch check of DS_CONFIG=auto with the flags in EXTRA_ARGS")
    assert "submit with another --nodes" not in res.stderr  # the node count is not the cause


def test_a_file_named_like_a_layout_word_is_not_auto(tmp_path):
    """Only the exact word auto asks the trainer to choose; a near miss is a missing file, and the
    message offers auto."""
    res, out_dir = run_bad(tmp_path, True, DS_CONFIG="Auto")
    assert_refused(res, out_dir, "DS_CONFIG=Auto not found", "Set DS_CONFIG to auto")


def test_explicit_offload_config_is_still_passed_through(tmp_path):
    cfg_path = REPO / "ds_configs" / "zero3_offload.json"
    res = run_script("llama2_70b.sh", tmp_path, DRY_RUN="1", MODEL="tiny-llama", LORETTA_HOSTLIST="python",
                     DS_CONFIG="ds_configs/zero3_offload.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"--ds_config {cfg_path} " in parse_plan(res.stdout)["srun"]
    zero = json.loads(cfg_path.read_text())["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["device"] == "cpu"


def test_master_port_from_env_or_job_id(tmp_path):
    ds = write_ds_config(tmp_path / "ds.json")
    common = dict(DRY_RUN="1", DS_CONFIG=str(ds), MODEL="tiny-llama", LORETTA_HOSTLIST="python",
                  SLURM_JOB_NODELIST="n[1-2]")
    res = run_script("llama2_13b.sh", tmp_path, MASTER_PORT="31337", **common)
    assert parse_plan(res.stdout)["master_port"] == 31337
    a = parse_plan(run_script("llama2_13b.sh", tmp_path, SLURM_JOB_ID="123456", **common).stdout)
    b = parse_plan(run_script("llama2_13b.sh", tmp_path, SLURM_JOB_ID="123457", **common).stdout)
    assert 1024 < a["master_port"] < 65536 and a["master_port"] != b["master_port"]


# --- bad inputs: a clear message, a non-zero exit, nothing started --------------------------

def run_bad(tmp_path: Path, dry_run: bool, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the 13B script with an input problem, as a dry run or as inside a real allocation.

    Outside a dry run the helper would go on to create OUTPUT_DIR and call srun: that neither
    happens shows that validation comes first.
    """
    out_dir = tmp_path / "out"
    base = dict(SLURM_JOB_NODELIST="gpu[01-02]", GPUS_PER_NODE="8", OUTPUT_DIR=str(out_dir),
                MODEL="meta-llama/Llama-2-13b-hf", DATA="sentiment", LORETTA_HOSTLIST="python")
    if dry_run:
        base["DRY_RUN"] = "1"
    else:
        base.update(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="8")
    base.update(env)
    res = run_script("llama2_13b.sh", tmp_path, **base)
    return res, out_dir


def assert_refused(res: subprocess.CompletedProcess, out_dir: Path, *phrases: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "nothing was started" in res.stderr
    for phrase in phrases:
        assert phrase in res.stderr, f"{phrase!r} not in:\n{res.stderr}"
    assert "[launch] srun:" not in res.stdout
    assert not out_dir.exists()


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("model", ["/nonexistent/Llama-2-13b-hf", "./models/missing"])
def test_missing_model_path(tmp_path, dry_run, model):
    ds = write_ds_config(tmp_path / "ds.json")
    res, out_dir = run_bad(tmp_path, dry_run, MODEL=model, DS_CONFIG=str(ds))
    assert_refused(res, out_dir, "MODEL=", "does not exist", "Set MODEL to")
    assert os.path.basename(model) in res.stderr


def test_model_name_is_not_checked_as_a_path(tmp_path):
    """A hub-style name (org/name) or a preset is passed through; only path-like values are checked."""
    ds = write_ds_config(tmp_path / "ds.json")
    for model in ("meta-llama/Llama-2-13b-hf", "tiny-llama"):
        res, _ = run_bad(tmp_path, True, MODEL=model, DS_CONFIG=str(ds))
        assert res.returncode == 0, res.stderr
        assert f"--model {model} " in res.stdout


def test_existing_relative_model_path_is_made_absolute(tmp_path):
    (tmp_path / "ckpt").mkdir()
    ds = write_ds_config(tmp_path / "ds.json")
    res, _ = run_bad(tmp_path, True, MODEL="./ckpt", DS_CONFIG=str(ds))
    assert res.returncode == 0, res.stderr
    assert f"--model {tmp_path / 'ckpt'} " in res.stdout


@pytest.mark.parametrize("dry_run", [True, False])
def test_ds_config_not_found(tmp_path, dry_run):
    res, out_dir = run_bad(tmp_path, dry_run, DS_CONFIG="ds_configs/does_not_exist.json")
    assert_refused(res, out_dir, "DS_CONFIG=ds_configs/does_not_exist.json not found",
                   "Set DS_CONFIG to")


def test_ds_config_relative_to_checkout(tmp_path):
    """A relative DS_CONFIG that is not under the current directory is looked up in the checkout."""
    configs = sorted((REPO / "ds_configs").glob("*.json"))
    if not configs:
        pytest.skip("no ds_configs/*.json in the checkout yet")
    rel = configs[0].relative_to(REPO)
    res, _ = run_bad(tmp_path, True, DS_CONFIG=str(rel), SLURM_JOB_NODELIST="a01")
    # The config's own batch numbers decide whether 8 processes fit; the path is what matters.
    assert "not found" not in res.stderr
    assert f"--ds_config {configs[0]} " in res.stdout or "DeepSpeed batch" in res.stderr


# The batch split is the trainer's rule (loretta-ds plan --check batch, from distributed/ds_config.py;
# its cases are tested in tests/test_ds_config.py): the launcher applies it to the job's process
# count before starting anything, dry run or not.
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_batch_that_does_not_fit_the_job_is_refused_by_the_trainers_rule(tmp_path, dry_run):
    # 16 / (1 x 2) = 8 processes allowed; 2 nodes x 8 GPUs = 16.
    ds = write_ds_config(tmp_path / "ds.json", train_batch_size=16,
                         train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=2)
    res, out_dir = run_bad(tmp_path, dry_run, DS_CONFIG=str(ds))
    assert_refused(res, out_dir, "train_batch_size=16 in the DeepSpeed config does not divide into 16 process(es)",
                   "it fits 8 process(es)", "or to 32 for 16 process(es)",
                   "This job starts 16 processes (2 nodes x GPUS_PER_NODE=8)")


def test_a_batch_that_fits_is_planned_and_batch_flags_count(tmp_path):
    ds = write_ds_config(tmp_path / "ds.json", train_batch_size=32, train_micro_batch_size_per_gpu="auto",
                         gradient_accumulation_steps=2)
    res, _ = run_bad(tmp_path, True, DS_CONFIG=str(ds))
    assert res.returncode == 0, res.stderr
    assert parse_plan(res.stdout)["world_size"] == 16
    assert "[launch] batch: global batch 32 = micro batch 1 x grad accum 2 x 16 process(es)" in res.stdout
    # A batch flag in EXTRA_ARGS is part of the split: micro batch 2 x 2 x 16 is not 32.
    res, out_dir = run_bad(tmp_path, True, DS_CONFIG=str(ds), EXTRA_ARGS="--micro_batch_size 2")
    assert_refused(res, out_dir, "does not divide into 16 process(es) x micro batch 2 x gradient accumulation 2")


def test_invalid_json_config(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"train_batch_size": 8,')
    res, out_dir = run_bad(tmp_path, True, DS_CONFIG=str(bad))
    assert_refused(res, out_dir, "is not valid JSON")


def test_all_problems_reported_at_once(tmp_path):
    res, out_dir = run_bad(tmp_path, False, MODEL="/nonexistent/model", DS_CONFIG="/nope.json",
                           GPUS_PER_NODE="eight")
    assert_refused(res, out_dir, "MODEL=/nonexistent/model", "DS_CONFIG=/nope.json",
                   "GPUS_PER_NODE='eight'")
    assert int(re.search(r"\((\d+) problem\(s\) above\)", res.stderr).group(1)) >= 3


def test_outside_an_allocation_without_dry_run(tmp_path):
    ds = write_ds_config(tmp_path / "ds.json")
    out_dir = tmp_path / "out"
    res = run_script("llama2_7b.sh", tmp_path, MODEL="tiny-llama", DS_CONFIG=str(ds),
                     OUTPUT_DIR=str(out_dir))
    assert_refused(res, out_dir, "not inside a SLURM allocation", "DRY_RUN=1")


def test_more_processes_per_node_than_allocated_tasks(tmp_path):
    ds = write_ds_config(tmp_path / "ds.json")
    res, out_dir = run_bad(tmp_path, False, DS_CONFIG=str(ds), GPUS_PER_NODE="16")
    assert_refused(res, out_dir, "GPUS_PER_NODE=16", "--ntasks-per-node=8")


@pytest.mark.parametrize("nodelist", ["gpu[01-", "gpu[04-01]"])
def test_bad_node_list(tmp_path, nodelist):
    ds = write_ds_config(tmp_path / "ds.json")
    res, out_dir = run_bad(tmp_path, True, DS_CONFIG=str(ds), SLURM_JOB_NODELIST=nodelist)
    assert_refused(res, out_dir, f"cannot expand the node list '{nodelist}'")
