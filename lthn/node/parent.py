"""`lthn-node run` stays a small parent of supervisord (issue #15), so the node answers
the signals an init system sends a daemon:

- SIGHUP: the reload of `lthn-node reload` (lthn/node/reload.py). supervisord's own SIGHUP
  would stop and start every program, which is a restart, not a reload.
- SIGTERM / SIGINT: passed to supervisord, which stops every program cleanly.

It ends with supervisord's exit status; supervisord gets SIGTERM if this process is
killed (#14: no program outlives the node's supervision).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable

from lthn.process import die_with_parent
from lthn.stop_signals import SignalPipe

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def supervise(argv: list[str], env: dict[str, str], on_reload: Callable[[], object]) -> int:
    """Run supervisord (`argv`) as a child until it ends; SIGHUP calls `on_reload`."""
    with SignalPipe((*STOP_SIGNALS, signal.SIGHUP)) as signals:
        sys.stdout.flush()
        child = subprocess.Popen(argv, env=env,
                                 preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        child_end = os.pidfd_open(child.pid)
        try:
            while True:
                ready, _, _ = select.select([child_end, signals.fileno()], [], [])
                if child_end in ready:
                    break
                for signum in signals.take():
                    if signum in STOP_SIGNALS:
                        child.send_signal(signal.SIGTERM)   # supervisord's clean shutdown
                    else:
                        print("lthn-node: SIGHUP: reloading", flush=True)
                        on_reload()
                        sys.stdout.flush()
        finally:
            os.close(child_end)
        code = child.wait()
    return code if code >= 0 else 128 - code
