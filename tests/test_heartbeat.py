"""Lost-rank detection when rank 0, which hosts the store, ends first after its own check.

Three real processes in a gloo process group, each with the trainer's heartbeat. Rank 2 dies; rank 0
checks for lost ranks and ends as soon as it has its answer (as a reporting rank does), which takes
the store down; rank 1 started its own check a little later, so the store vanishes in the middle of
it. Rank 1 must not take the vanished store for a lost rank 0 (it saw rank 0 checking too): one
rank reports the loss, rank 0, naming rank 2. Before rank 1 remembered the survivors it had seen,
it named rank 0 and printed a second, wrong report (the two-node CI test's node loss showed it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from reliability_support import REPO, clean_env, free_port

STAGGER_S = 2.0  # rank 1 starts its check this much after rank 0: the store goes away mid-check


def _rank_main(rank: int) -> None:
    import torch.distributed as dist

    from loretta_ds.distributed.health import start_heartbeat

    dist.init_process_group("gloo", rank=rank, world_size=3)
    heartbeat = start_heartbeat()
    dist.barrier()
    if rank == 2:
        os._exit(0)  # lost: no more beats
    time.sleep(1.0 + (STAGGER_S if rank == 1 else 0.0))
    lost = heartbeat.lost_ranks()
    reporter = min(r for r in range(3) if r not in lost)
    print("RESULT " + json.dumps({"rank": rank, "lost": list(lost), "reporter": reporter}), flush=True)
    os._exit(0)  # as a reporting rank ends: with it goes the store it hosts


@pytest.mark.multiprocess
def test_only_rank_0_reports_when_its_store_ends_before_another_survivors_check():
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ranks = [subprocess.Popen([sys.executable, __file__, str(rank)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(3)]
    outputs = [process.communicate(timeout=120)[0] for process in ranks]
    results = {}
    for output in outputs:
        for line in output.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results[result["rank"]] = result
    assert set(results) == {0, 1}, outputs
    assert results[0]["lost"] == [2] and results[0]["reporter"] == 0, results
    assert 0 not in results[1]["lost"], results  # the store went away because rank 0 ended, not died
    assert results[1]["reporter"] == 0, results  # so rank 1 prints nothing: one report


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]))
