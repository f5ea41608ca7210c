"""Two SLURM nodes for real: slurm/tiny_cpu_2node.sh (2 nodes x 2 processes, its default
DS_CONFIG=auto, which replicates the tiny frozen base on every process: ZeRO-2; the built-in tiny
model) through slurm/_launch.sh on the two-node cluster of .ci/slurm_cluster.sh,
where node1 and node2 are network namespaces joined by veths and a bridge. A rank on node2 reaches
node1's ranks only over that network, as on two machines.

- a run to the end (adapter + merged export), with the TCP connections between the ranks read from
  /proc while it trains: every rank talks to every other one, across the nodes' addresses;
- preempted (scancel -b -s USR1) -> checkpoint -> requeue -> resume: the same adapter, bit for bit;
- node2's processes SIGKILLed: node1's ranks end within a bounded time naming ranks 2, 3 and node2,
  and a resubmission continues from the newest checkpoint to the same adapter;
- a checkpoint written by 2 nodes x 2 resumes on 1 node x 2, and the other way round.

Needs LORETTA_SLURM=1 and the cluster with two nodes; where network namespaces cannot be created,
.ci/slurm_cluster.sh starts one node and these tests skip, saying why. One uninterrupted run is
shared by the tests; the killed run also provides the 2-node checkpoint of the world-size test.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from test_slurm_cluster import (_SKIP, FINAL_STATES, JOB_TIMEOUT_S, completed, job_info, load_adapter, run,
                                sbatch, slurm_env, trained_steps, wait_job)

TWO_NODES = "tiny_cpu_2node.sh"
ONE_NODE = "tiny_cpu.sh"
STEPS = 30
SAVE_EVERY = 6
# Bounds the wait for a rank that vanishes without closing its sockets; a SIGKILLed rank's
# peers see the connection close at once. Not an identity setting: resumes may differ in it.
DIST_TIMEOUT = 120
EXTRA_ARGS = f"--max_steps {STEPS} --eval_batches 2 --save_every {SAVE_EVERY} --dist_timeout {DIST_TIMEOUT}"
POLL_S = 0.2


def _multinode_skip() -> str | None:
    if _SKIP is not None:
        return _SKIP
    res = run(["sinfo", "-h", "-N", "-o", "%N"])
    nodes = sorted(set(res.stdout.split()))
    if len(nodes) >= 2:
        return None
    conf = slurm_env().get("SLURM_CONF", "")
    reason_file = Path(conf).parent.parent / "multinode_unavailable" if conf else None
    why = (reason_file.read_text(errors="replace").strip() if reason_file and reason_file.is_file()
           else "started with one node")
    return (f"the SLURM cluster has {len(nodes)} node ({', '.join(nodes)}): {why}. "
            ".ci/slurm_cluster.sh starts node1 and node2 where network namespaces can be created")


_MULTINODE_SKIP = _multinode_skip()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_MULTINODE_SKIP is not None, reason=str(_MULTINODE_SKIP))]


# --- reading a job from outside -------------------------------------------------------------

def read_log(path: Path) -> str:
    # Two ranks' writes may interleave inside a multibyte character.
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def node_address(node: str) -> str:
    info = dict(re.findall(r"(\w+)=(\S*)", run(["scontrol", "show", "node", "-o", node]).stdout))
    return info["NodeAddr"]


@dataclass
class Rank:
    rank: int
    node: str
    pid: int
    netns: str
    process: psutil.Process


def rank_processes(job: str) -> list[Rank]:
    """The job's trainer processes (srun's tasks, exec'd into python), by rank."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) < 2 or not os.path.basename(cmd[0]).startswith("python") \
                or not cmd[1].endswith("launch/train.py"):
            continue
        try:
            env = proc.environ()
            netns = os.readlink(f"/proc/{proc.pid}/ns/net")
        except (psutil.Error, OSError):
            continue
        if env.get("SLURM_JOB_ID") == job and "RANK" in env:
            found.append(Rank(int(env["RANK"]), env.get("SLURMD_NODENAME", "?"), proc.pid, netns, proc))
    return sorted(found, key=lambda r: r.rank)


def _endpoint(hex_endpoint: str) -> tuple[str, int]:
    host, port = hex_endpoint.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp{,6} print each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr), int(port, 16)


def established_tcp(pid: int) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """(local, remote) of the process's established TCP connections, read in its own network
    namespace (/proc/PID/net is the namespace of PID, not of the reader)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    conns = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                conns.append((_endpoint(fields[1]), _endpoint(fields[2])))
    return conns


@dataclass
class PeerSnapshot:
    ranks: list[Rank]
    connections: dict[int, list[tuple[tuple[str, int], tuple[str, int]]]]  # rank -> (local, remote)
    master_port: int

    def peers(self) -> dict[int, set[int]]:
        """rank -> the ranks it holds a connection with (the other end's socket is theirs); the
        rendezvous store's connections to MASTER_PORT left out, so what is left is gloo's."""
        owner = {local: rank for rank, conns in self.connections.items() for local, _ in conns}
        return {rank: {owner[remote] for local, remote in conns
                       if remote in owner and self.master_port not in (local[1], remote[1])}
                for rank, conns in self.connections.items()}

    def table(self) -> str:
        lines = []
        for r in self.ranks:
            peers = sorted({f"{remote[0]}:{remote[1]}" for _, remote in self.connections[r.rank]})
            lines.append(f"rank {r.rank} on {r.node} (pid {r.pid}, {r.netns}): peers {', '.join(peers)}")
        return "\n".join(lines)


def snapshot_peers(job: str, out_dir: Path, log: Path, master_port: int) -> PeerSnapshot:
    """Once the ranks train (their process group is up), their processes and TCP connections."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        info = job_info(job)
        assert info.get("JobState") not in FINAL_STATES, \
            f"job {job} ended before its connections were read:\n{read_log(log)[-4000:]}"
        if trained_steps(out_dir) >= 2:
            ranks = rank_processes(job)
            connections = {r.rank: established_tcp(r.pid) for r in ranks}
            if len(ranks) == 4:
                return PeerSnapshot(ranks, connections, master_port)
        time.sleep(POLL_S)
    pytest.fail(f"job {job}: no training step within {JOB_TIMEOUT_S} s\n{read_log(log)[-4000:]}")


def checkpoint_steps(out_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (COMPLETE is the trainer's last write of one)."""
    found = []
    for path in (out_dir / "checkpoints").glob("step-*"):
        if (path / "COMPLETE").is_file():
            found.append(int(path.name.split("-")[1]))
    return sorted(found)


def train_steps(out_dir: Path) -> list[int]:
    from loretta_ds.run.metrics import read_metrics

    return [r["step"] for r in read_metrics(out_dir / "metrics.jsonl") if r.get("kind") == "train"]


def wait_until(condition, job: str, log: Path, what: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        info = job_info(job)
        assert info.get("JobState") not in FINAL_STATES, \
            f"job {job} ended while waiting for {what}:\n{read_log(log)[-4000:]}"
        assert time.monotonic() < deadline, f"job {job}: no {what} within {timeout} s\n{read_log(log)[-4000:]}"
        time.sleep(POLL_S)


def master_port_of(log: Path) -> int:
    found = re.findall(r"MASTER_PORT=(\d+)", read_log(log))
    assert found, f"the launcher printed no MASTER_PORT:\n{read_log(log)[-2000:]}"
    return int(found[-1])


def preempt_and_release(job: str, log: Path) -> None:
    """scancel -b -s USR1; once the job has requeued itself and is PENDING, release SLURM's hold."""
    res = run(["scancel", "--batch", "--signal=USR1", job])
    assert res.returncode == 0, res.stderr
    requeued(job, log)
    # slurmd refuses job credentials issued in the same second as the requeue revoked the old
    # ones ("Job credential revoked" fails the job for good), hence the short pause.
    time.sleep(2)
    run(["scontrol", "update", f"JobId={job}", "StartTime=now"])  # fails harmlessly if started


def requeued(job: str, log: Path) -> dict[str, str]:
    return wait_job(job, lambda i: int(i.get("Restarts", "0")) >= 1 and i.get("JobState") == "PENDING",
                    "the requeue", log)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in b.items():
        assert a[name].dtype == tensor.dtype and a[name].shape == tensor.shape, name
        assert a[name].numpy().tobytes() == tensor.numpy().tobytes(), \
            f"{name}: max abs diff {(a[name].double() - tensor.double()).abs().max().item()}"


# --- shared runs ----------------------------------------------------------------------------

@dataclass
class Job:
    job: str
    out: Path
    log: Path
    info: dict


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Job, PeerSnapshot]:
    """One 2 x 2 run from start to finish, and its ranks' connections read while it trained."""
    base = tmp_path_factory.mktemp("slurm_2node_uninterrupted")
    out, log = base / "run", base / "job.log"
    job = sbatch(TWO_NODES, log, OUTPUT_DIR=str(out), EXTRA_ARGS=EXTRA_ARGS)
    wait_until(lambda: "MASTER_PORT=" in read_log(log), job, log, "launcher output")
    snapshot = snapshot_peers(job, out, log, master_port_of(log))
    info = wait_job(job, completed, "completion", log)
    print(f"2 nodes x 2 ranks, connections while training:\n{snapshot.table()}")
    return Job(job, out, log, info), snapshot


@dataclass
class LostNode:
    job: Job
    killed: list[Rank]
    survivors: list[Rank]
    survivors_exit_s: float
    copy: Path  # the run directory as the failure left it (a 2 x 2 checkpoint), for another test


@pytest.fixture(scope="module")
def node2_killed(tmp_path_factory) -> LostNode:
    """A 2 x 2 run whose node2 processes are SIGKILLed after a checkpoint and two more steps."""
    base = tmp_path_factory.mktemp("slurm_2node_lost")
    out, log = base / "run", base / "job.log"
    job = sbatch(TWO_NODES, log, OUTPUT_DIR=str(out), EXTRA_ARGS=EXTRA_ARGS)
    wait_until(lambda: SAVE_EVERY in checkpoint_steps(out) and trained_steps(out) >= SAVE_EVERY + 2,
               job, log, f"a checkpoint at step {SAVE_EVERY} and two more steps")
    ranks = rank_processes(job)
    assert [(r.rank, r.node) for r in ranks] == [(0, "node1"), (1, "node1"), (2, "node2"), (3, "node2")]
    killed = [r for r in ranks if r.node == "node2"]
    survivors = [r for r in ranks if r.node == "node1"]
    killed_at = time.monotonic()
    for r in killed:
        os.kill(r.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs([r.process for r in survivors], timeout=DIST_TIMEOUT + 60)
    survivors_exit_s = time.monotonic() - killed_at
    assert not alive, f"node1's ranks still run {survivors_exit_s:.0f} s after node2's were killed"
    info = wait_job(job, lambda i: i.get("JobState") in FINAL_STATES, "the job to end", log, timeout=120)
    copy = base / "copy"
    shutil.copytree(out, copy, symlinks=True)
    return LostNode(Job(job, out, log, info), killed, survivors, survivors_exit_s, copy)


# --- tests ----------------------------------------------------------------------------------

def test_two_nodes_train_across_namespaces_and_export(uninterrupted):
    run_, snapshot = uninterrupted
    assert run_.info["ExitCode"] == "0:0" and run_.info["NodeList"] == "node[1-2]"
    text = read_log(run_.log)
    assert "node list: node[1-2] -> node1 node2 (2 node(s)" in text
    assert "master: MASTER_ADDR=node1" in text
    assert "world size: WORLD_SIZE=4 (2 node(s) x GPUS_PER_NODE=2)" in text
    assert "ZeRO stage 2, 4 process(es)" in text  # the layout auto picks for the tiny model
    assert "trainer finished (exit 0)" in text
    assert load_adapter(run_.out)
    assert (run_.out / "merged" / "config.json").is_file() and any((run_.out / "merged").glob("*.safetensors"))

    # Ranks 0, 1 on node1 and 2, 3 on node2, each node in its own network namespace (and not
    # in this test's).
    ranks = snapshot.ranks
    assert [(r.rank, r.node) for r in ranks] == [(0, "node1"), (1, "node1"), (2, "node2"), (3, "node2")]
    assert ranks[0].netns == ranks[1].netns != ranks[2].netns == ranks[3].netns
    assert os.readlink("/proc/self/ns/net") not in (ranks[0].netns, ranks[2].netns)

    # Peer addresses: the nodes' own addresses on the private network, never loopback between
    # nodes; every rank holds a gloo connection with every other rank, so node1 <-> node2 pairs
    # run over the veths.
    addr = {"node1": node_address("node1"), "node2": node_address("node2")}
    assert addr["node1"] != addr["node2"] and not ipaddress.ip_address(addr["node1"]).is_loopback
    table = snapshot.table()
    by_rank = {r.rank: r for r in ranks}
    for r in ranks:
        local_addrs = {local[0] for local, _ in snapshot.connections[r.rank]}
        assert local_addrs <= {addr[r.node], "127.0.0.1"}, table
    for rank, peers in snapshot.peers().items():
        assert peers == {0, 1, 2, 3} - {rank}, f"rank {rank} talks to ranks {sorted(peers)}\n{table}"
    for rank, conns in snapshot.connections.items():
        other = "node2" if by_rank[rank].node == "node1" else "node1"
        assert any(remote[0] == addr[other] for _, remote in conns), table
        # The rendezvous store lives on the first node: every rank's store connection goes there.
        assert any(remote == (addr["node1"], snapshot.master_port) or local == (addr["node1"], snapshot.master_port)
                   for local, remote in conns), table
    cross = sorted({(by_rank[a].node, b) for a, peers in snapshot.peers().items() for b in peers
                    if by_rank[a].node != by_rank[b].node})
    assert cross == [("node1", 2), ("node1", 3), ("node2", 0), ("node2", 1)], table


def test_preempted_two_node_job_requeues_and_resumes_bit_for_bit(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out, log = tmp_path / "run", tmp_path / "job.log"
    job = sbatch(TWO_NODES, log, OUTPUT_DIR=str(out), EXTRA_ARGS=EXTRA_ARGS)
    wait_until(lambda: trained_steps(out) >= 3, job, log, "three training steps")
    preempt_and_release(job, log)
    steps_before_requeue = trained_steps(out)
    info = wait_job(job, completed, "completion after the requeue", log)

    text = read_log(log)
    assert 3 <= steps_before_requeue < STEPS, "the signal did not land mid-run"
    assert int(info["Restarts"]) == 1 and info["NodeList"] == "node[1-2]"
    assert "got SIGUSR1" in text and "trainer exited 75 (preempted, checkpoint written)" in text, text[-4000:]
    assert f"resumed from {out / 'checkpoints' / f'step-{steps_before_requeue}'} at step {steps_before_requeue}" \
        in text, text[-4000:]
    assert train_steps(out) == list(range(1, STEPS + 1))
    assert (out / "merged" / "config.json").is_file()
    assert_bit_equal(load_adapter(out), load_adapter(reference.out))


def test_lost_node_ends_the_survivors_naming_it_and_a_resubmission_continues(node2_killed, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    lost = node2_killed
    text = read_log(lost.job.log)
    print(f"node1's ranks ended {lost.survivors_exit_s:.1f} s after node2's were killed")
    # Bounded: the dead ranks' connections close at once; the heartbeat check takes a few seconds.
    assert lost.survivors_exit_s < DIST_TIMEOUT, text[-4000:]
    assert lost.job.info["JobState"] == "FAILED", lost.job.info
    errors = [line for line in text.splitlines() if line.startswith("error: lost contact")]
    assert len(errors) == 1, text[-4000:]  # one rank reports, once
    assert errors[0].startswith("error: lost contact with ranks 2, 3 of 4 on node2 (all of its ranks) at step "), errors
    assert "the node is down or unreachable, or every process on it died" in errors[0]
    newest = checkpoint_steps(lost.job.out)[-1]
    assert newest >= SAVE_EVERY
    assert f"newest complete checkpoint is {lost.job.out / 'checkpoints' / f'step-{newest}'}" in errors[0]
    assert "trainer failed with exit code" in text and "Not requeued" in text
    assert not (lost.job.out / "adapter").exists()

    log = tmp_path / "resubmitted.log"
    job = sbatch(TWO_NODES, log, OUTPUT_DIR=str(lost.job.out), EXTRA_ARGS=EXTRA_ARGS)
    wait_job(job, completed, "completion of the resubmission", log)
    text = read_log(log)
    assert f"resumed from {lost.job.out / 'checkpoints' / f'step-{newest}'} at step {newest}" in text, text[-4000:]
    assert train_steps(lost.job.out) == list(range(1, STEPS + 1))
    assert_bit_equal(load_adapter(lost.job.out), load_adapter(reference.out))


def test_checkpoint_moves_from_two_nodes_to_one_and_back(node2_killed, uninterrupted, tmp_path):
    """2 x 2 -> 1 x 2 -> 2 x 2 on one run directory. The global batch stays 16; only its split
    over the processes changes, so the result equals the 2-node run's up to float summation order."""
    reference, _ = uninterrupted
    out = node2_killed.copy
    start = checkpoint_steps(out)[-1]
    stale = max(train_steps(out))  # the killed run logged steps past its checkpoint

    log1 = tmp_path / "one_node.log"
    job1 = sbatch(ONE_NODE, log1, OUTPUT_DIR=str(out), EXTRA_ARGS=EXTRA_ARGS)
    # Past every step the killed run logged: these records are the 1-node run's.
    wait_until(lambda: "resumed from" in read_log(log1) and trained_steps(out) >= stale + 2,
               job1, log1, f"step {stale + 2} on one node")
    res = run(["scancel", "--batch", "--signal=USR1", job1])
    assert res.returncode == 0, res.stderr
    requeued(job1, log1)
    # The run moves to two nodes: the requeued one-node job is not wanted any more.
    assert run(["scancel", job1]).returncode == 0
    text1 = read_log(log1)
    middle = checkpoint_steps(out)[-1]
    assert f"resumed from {out / 'checkpoints' / f'step-{start}'} at step {start}" in text1, text1[-4000:]
    assert "ZeRO stage 2, 2 process(es)" in text1 and "trainer exited 75" in text1
    assert stale + 2 <= middle < STEPS

    log2 = tmp_path / "two_nodes.log"
    job2 = sbatch(TWO_NODES, log2, OUTPUT_DIR=str(out), EXTRA_ARGS=EXTRA_ARGS)
    info = wait_job(job2, completed, "completion on two nodes", log2)
    text2 = read_log(log2)
    assert info["NodeList"] == "node[1-2]"
    assert f"resumed from {out / 'checkpoints' / f'step-{middle}'} at step {middle}" in text2, text2[-4000:]
    assert "ZeRO stage 2, 4 process(es)" in text2
    assert train_steps(out) == list(range(1, STEPS + 1))
    difference = max_difference(load_adapter(out), load_adapter(reference.out))
    print(f"2x2 -> 1x2 (steps {start}-{middle}) -> 2x2: max abs difference from the 2x2 run {difference:.2e}")
    assert difference <= 1e-4
