"""The failure that ends a run for a reason the user can act on: one message, no traceback.

It lives with the run directory, below every layer that can end a run (the metrics log when its
disk is full, the distributed layer's lost ranks and failed checkpoints, the trainer).
"""


class RunFailure(RuntimeError):
    """A run that cannot continue; the message says why and how to continue (usually --resume auto).

    ``reporter``: the one rank that prints the message; rank 0, unless rank 0 is the one lost.
    """

    def __init__(self, message: str, reporter: int = 0):
        super().__init__(message)
        self.reporter = reporter
