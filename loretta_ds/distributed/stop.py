"""Preemption: turn SIGUSR1 / SIGTERM / SIGINT into a stop request that every rank agrees on.

A signal only sets a flag; the training loop finishes the optimizer step it is in, and the ranks
all-reduce their flags once per step (together with the bad-step flag, one tiny collective), so
all of them stop after the same step, write one checkpoint together and exit with
PREEMPTED_EXIT_CODE. A second SIGINT interrupts at once (a user at a terminal insists).
"""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs the handlers on creation (for ``signals``; ``watch`` adds more later);
    ``requested`` says whether a signal arrived here."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.requested = False
        self.signal_name: str | None = None
        self._previous = {}
        for sig in signals:
            self.watch(sig)

    def watch(self, sig: signal.Signals) -> None:
        if sig not in self._previous:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        if not self.requested:
            # The first signal is the one the user sent: Ctrl-C under the deepspeed launcher
            # reaches the ranks as SIGINT, and the launcher's SIGTERM follows it.
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
