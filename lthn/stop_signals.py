"""SIGTERM, SIGINT (and SIGHUP) recorded for a loop to act on (#14).

Whatever the inherited disposition: a shell that starts a job in the background leaves
SIGINT ignored, and Python then installs no handler of its own (a test's lthn-tap ignored
SIGINT for an hour). The handler only records, taking no lock (an Event.set() in a handler
can deadlock on the lock its own thread holds); the loop looks at `stop_asked`.
"""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.pending: int | None = None

    def install(self, signals: tuple[int, ...] = SIGNALS) -> StopSignals:
        for signum in signals:
            signal.signal(signum, self.record)
        return self

    def record(self, signum: int, _frame: Any = None) -> None:
        self.pending = signum

    @property
    def stop_asked(self) -> bool:
        return self.pending in (signal.SIGTERM, signal.SIGINT)
