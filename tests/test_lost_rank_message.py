"""The message a survivor prints when a collective fails: the lost ranks, gloo's reason without
its source location, and the way to continue (the real fault runs are in test_reliability_faults)."""
from pathlib import Path

from loretta_ds.distributed.health import LostRanks, describe_lost_rank

GLOO = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.0.0.2]:4711: "
                    "Connection reset by peer. This may indicate a possible application crash on rank 0")


def test_names_the_silent_ranks_the_reason_and_the_checkpoint_to_resume():
    message = describe_lost_rank(GLOO, [1, 3], 4, 12, 60.0, Path("/runs/x/checkpoints/step-10"))
    assert message.startswith("lost contact with ranks 1, 3 of 4 at step 12: they stopped answering")
    assert "(Read error [10.0.0.2]:4711: Connection reset by peer)" in message
    assert "pair.cc" not in message
    assert "/runs/x/checkpoints/step-10; relaunch with --resume auto" in message


def test_without_a_silent_rank_it_blames_the_timeout_and_says_no_checkpoint_exists():
    message = describe_lost_rank(TimeoutError(""), [], 2, 3, 30.0, None)
    assert message.startswith("lost contact with another rank at step 3: every rank still answers")
    assert "--dist_timeout 30.0 s" in message and "(TimeoutError)" in message
    assert "No checkpoint was written yet" in message


def test_names_the_node_of_each_lost_rank_and_a_node_lost_whole():
    hosts = {0: "node1", 1: "node1", 2: "node2", 3: "node2"}
    message = describe_lost_rank(GLOO, LostRanks([2, 3], hosts), 4, 7, 60.0, None)
    assert message.startswith("lost contact with ranks 2, 3 of 4 on node2 (all of its ranks) at step 7: they "
                              "stopped answering (no heartbeat for 5 s): the node is down or unreachable")
    # One rank of a node: the process, not the node; the table may also be passed explicitly.
    message = describe_lost_rank(GLOO, [3], 4, 7, 60.0, None, hosts=hosts)
    assert message.startswith("lost contact with rank 3 of 4 on node2 at step 7: it stopped answering")
    assert "the process died or hangs" in message
    message = describe_lost_rank(GLOO, LostRanks([1, 2, 3], hosts), 4, 7, 60.0, None)
    assert message.startswith("lost contact with ranks 1, 2, 3 of 4 (rank 1 on node1; ranks 2, 3 on node2, "
                              "all of its ranks) at step 7")


def test_a_rank_whose_node_is_unknown_is_named_without_one():
    # Rank 3 died before it published its node: no node is guessed, and no node is called lost whole.
    message = describe_lost_rank(GLOO, LostRanks([2, 3], {0: "node1", 1: "node1", 2: "node2"}), 4, 7, 60.0, None)
    assert message.startswith("lost contact with ranks 2, 3 of 4 at step 7: they stopped answering")
    assert "the process died or hangs" in message
