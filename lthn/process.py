"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> bool:
    """Get `signum` (default SIGKILL) when the process that started this one dies (Linux),
    so a killed parent leaves no child behind; as a Popen `preexec_fn`, or first thing in
    a program. Kept across execve; cleared when the process changes its user or group
    (squid dropping root). False where unsupported: the parent's own clean-up is then the
    only one."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
