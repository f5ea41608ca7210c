"""Failures that end a run for a reason the user can act on: reported as one message, no traceback."""

from ..run.failure import RunFailure  # noqa: F401  (the base class; imported from here by the trainer)


class CheckpointError(RunFailure):
    """Writing a checkpoint failed; the previous checkpoints are intact."""


class LostRank(RunFailure):
    """A collective failed: another process died, hung past --dist_timeout, or the network broke."""


class RendezvousPortInUse(RunFailure):
    """The rank hosting the rendezvous cannot listen on MASTER_PORT: another process holds it."""
