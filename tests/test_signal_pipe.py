"""lthn.stop_signals.SignalPipe: a signal wakes a select beside other descriptors, and is
handed over once, in order (the small parents of supervisord, haproxy and squid)."""

from __future__ import annotations

import os
import select
import signal

from lthn.stop_signals import SignalPipe


def test_signals_wake_the_select_and_are_taken_once_in_order():
    other_read, other_write = os.pipe()
    before = signal.getsignal(signal.SIGUSR1)
    try:
        with SignalPipe((signal.SIGUSR1, signal.SIGUSR2)) as signals:
            assert signals.take() == []
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR1)
            ready, _, _ = select.select([other_read, signals.fileno()], [], [], 10.0)
            assert ready == [signals.fileno()]
            assert signals.take() == [signal.SIGUSR2, signal.SIGUSR1]
            assert signals.take() == []
            # drained: the select waits again (until the other descriptor is ready)
            os.write(other_write, b"x")
            ready, _, _ = select.select([other_read, signals.fileno()], [], [], 10.0)
            assert ready == [other_read]
        assert signal.set_wakeup_fd(-1) == -1   # the pipe is no longer the wakeup fd
    finally:
        signal.signal(signal.SIGUSR1, before)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        os.close(other_read)
        os.close(other_write)
