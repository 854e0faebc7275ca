"""SIGTERM, SIGINT (and SIGHUP) recorded for a loop to act on (#14).

Whatever the inherited disposition: a shell that starts a job in the background leaves
SIGINT ignored, and Python then installs no handler of its own (a test's lthn-tap ignored
SIGINT for an hour). The handler only records, taking no lock (an Event.set() in a handler
can deadlock on the lock its own thread holds); the loop looks at `stop_asked`.
"""

from __future__ import annotations

import os
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


class SignalPipe:
    """Signals as something `select` can wait on, beside other file descriptors (a
    child's pidfd): the handler records the number, and `signal.set_wakeup_fd` writes a
    byte to a pipe so the select wakes. For the small parents of supervisord
    (lthn/node/parent.py) and of haproxy and squid (services/proxy/foreground.py).

        with SignalPipe((signal.SIGTERM, signal.SIGHUP)) as signals:
            select.select([child_end, signals.fileno()], [], [])
            for signum in signals.take(): ...
    """

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = signals
        self.pending: list[int] = []
        self._read = self._write = -1

    def __enter__(self) -> SignalPipe:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._write)
        for signum in self.signals:
            signal.signal(signum, self._record)
        return self

    def _record(self, signum: int, _frame: Any = None) -> None:
        self.pending.append(signum)

    def fileno(self) -> int:
        return self._read

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first (the pipe drained)."""
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass
        taken, self.pending = self.pending, []
        return taken

    def __exit__(self, *_exc: object) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self._read)
        os.close(self._write)
