"""Programs must not outlive their supervisord (#14).

SIGKILL of supervisord (the OOM killer, an operator's mistake) used to leave every program
running; `lthn-node run` then started a second set beside them: two paymentd on one
ledger, an orphaned haproxy nobody supervised. Two guards:

- each program asks Linux for SIGTERM when its parent dies (`die_with_supervisord`,
  prctl PR_SET_PDEATHSIG), kept across the exec into haproxy; squid drops root to its
  own user, which clears that request, so lthn-squid stays squid's parent to pass it on;
- `lthn-node run` looks for what a dead supervisord of the same state dir left (anything
  that still runs in its environment: SUPERVISOR_ENABLED and this LTHN_STATE_DIR) and
  stops it first, and refuses to start beside a supervisord of that state dir that lives.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lthn.process import die_with_parent

STATE_VARIABLE = "LTHN_STATE_DIR"


def die_with_supervisord() -> None:
    """SIGTERM (each program's clean stop) when the supervisord that started this process
    dies; nothing when run by hand (a shell that exits must not take a program along)."""
    if os.environ.get("SUPERVISOR_ENABLED"):
        die_with_parent(signal.SIGTERM)


@dataclass(frozen=True)
class NodeProcess:
    pid: int
    name: str       # supervisor's process name (authd_0), or "supervisord"
    command: str


SUPERVISORD_COMMANDS = ("supervisord", "lthn.node.supervisord_main")


def _read(pid: int) -> tuple[dict[str, str], list[str]] | None:
    """A live process's environment (as it was at its exec) and arguments."""
    try:
        raw_env = Path(f"/proc/{pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
    except (OSError, IndexError):
        return None  # gone, or not ours to read
    env = {}
    for item in raw_env.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env, cmdline.decode(errors="replace").split("\0")[:-1]


def node_processes(state: Path) -> tuple[list[NodeProcess], list[NodeProcess]]:
    """(supervisords, programs) running for the node of this state dir, this process left
    out: a supervisord is started with LTHN_STATE_DIR set, its programs inherit it beside
    supervisor's own SUPERVISOR_ENABLED."""
    supervisors, programs = [], []
    own = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        found = _read(int(entry))
        if found is None:
            continue
        env, args = found
        value = env.get(STATE_VARIABLE)
        if not value or Path(value) != state:
            continue
        command = " ".join(args)
        if env.get("SUPERVISOR_ENABLED"):
            name = env.get("SUPERVISOR_PROCESS_NAME", "?")
            programs.append(NodeProcess(int(entry), name, command))
        elif any(os.path.basename(arg) in SUPERVISORD_COMMANDS for arg in args[:3]):
            # (supervisorctl -c .../supervisord.conf, run by `lthn-node ctl`, is not one)
            supervisors.append(NodeProcess(int(entry), "supervisord", command))
    return supervisors, programs


def _alive(pid: int) -> bool:
    return _read(pid) is not None


def stop(processes: list[NodeProcess], timeout: float = 10.0) -> list[NodeProcess]:
    """SIGTERM (and SIGCONT, for one stopped) each, SIGKILL what is left at the deadline;
    returns those that needed SIGKILL. Waits until all are gone (or unkillable)."""
    for proc in processes:
        for signum in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                break
    deadline = time.monotonic() + timeout
    left = list(processes)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # polling their /proc entries against the deadline
        left = [p for p in left if _alive(p.pid)]
    for proc in left:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    remaining = list(left)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [p for p in remaining if _alive(p.pid)]
    return left
