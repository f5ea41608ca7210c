"""Failures that end a run for a reason the user can act on: reported as one message, no traceback."""


class RunFailure(RuntimeError):
    """A run that cannot continue; the message says why and how to continue (usually --resume auto)."""


class CheckpointError(RunFailure):
    """Writing a checkpoint failed; the previous checkpoints are intact."""


class LostRank(RunFailure):
    """A collective failed: another process died, hung past --dist_timeout, or the network broke."""
