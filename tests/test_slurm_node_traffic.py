"""Only the TT cores cross the nodes: the bytes of a default two-node job, read from the kernel.

slurm/tiny_cpu_2node.sh, as a user submits it (its default DS_CONFIG), runs twice on the two-node
cluster of .ci/slurm_cluster.sh: SHORT and LONG optimizer steps, everything else equal. The bytes
that crossed node2's veth (rx + tx on its host side, counted by the kernel whatever sent them)
differ between the two jobs by LONG - SHORT steps' traffic; startup, the first step, the final
evaluation and the export cancel out. A layout that keeps the frozen base inside each node moves
only the trainable tensors' gradients and updates per step; one that gathers the base across the
nodes moves the whole frozen model (the tiny model's base is 51x its trainable bytes).

Needs LORETTA_SLURM=1 and the cluster with two nodes (skipped with the reason otherwise).
"""
from __future__ import annotations

import re

from benchmarks.harness.node_traffic import bytes_per_step, run_job, trainable_bytes
from test_slurm_multinode import TWO_NODES, pytestmark, read_log  # noqa: F401  (pytestmark: slurm, two nodes)

SHORT, LONG = 2, 10
# The issue's target: per step, at most 16 x the trainable bytes plus 64 KiB for the collectives'
# framing, the rendezvous store's polling and the daemons' heartbeats while the longer job runs.
TRAINABLE_FACTOR = 16
SLACK_BYTES = 64 * 1024


def test_default_two_node_job_keeps_the_frozen_base_inside_each_node(tmp_path):
    short = run_job(TWO_NODES, SHORT, tmp_path / "short", tmp_path / "short.log")
    long = run_job(TWO_NODES, LONG, tmp_path / "long", tmp_path / "long.log")
    per_step = bytes_per_step(short, long)
    trainable = trainable_bytes(long.output_dir)
    text = read_log(long.log)
    frozen = re.search(r"frozen \d+ tensors / ([\d,]+) params", text)
    frozen_bytes = 4 * int(frozen.group(1).replace(",", "")) if frozen else None
    layout = re.findall(r"^.*(?:layout|ZeRO stage).*$", text, re.M)
    limit = TRAINABLE_FACTOR * trainable + SLACK_BYTES
    report = (f"node2's veth: {short.bytes:,} B in {SHORT} steps, {long.bytes:,} B in {LONG} steps -> "
              f"{per_step:,.0f} B per step = {per_step / trainable:.1f} x the trainable {trainable:,} B "
              f"(limit {limit:,} B); frozen base {frozen_bytes:,} B; jobs took {short.seconds:.0f} s and "
              f"{long.seconds:.0f} s\n" + "\n".join(layout[:4]))
    print(report)
    # The gradients must cross: a figure below them means the counters read are not the job's.
    assert per_step >= trainable, report
    assert per_step <= limit, f"the frozen base crosses the nodes every step:\n{report}"
