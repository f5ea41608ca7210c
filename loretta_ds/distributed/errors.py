"""Failures that end a run for a reason the user can act on: reported as one message, no traceback."""


class RunFailure(RuntimeError):
    """A run that cannot continue; the message says why and how to continue (usually --resume auto).

    ``reporter``: the one rank that prints the message; rank 0, unless rank 0 is the one lost.
    """

    def __init__(self, message: str, reporter: int = 0):
        super().__init__(message)
        self.reporter = reporter


class CheckpointError(RunFailure):
    """Writing a checkpoint failed; the previous checkpoints are intact."""


class LostRank(RunFailure):
    """A collective failed: another process died, hung past --dist_timeout, or the network broke."""


class RendezvousPortInUse(RunFailure):
    """The rank hosting the rendezvous cannot listen on MASTER_PORT: another process holds it."""
