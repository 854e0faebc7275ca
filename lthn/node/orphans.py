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
    dies; nothing when run by hand (a shell that exits must not take a program along).

    A supervisord that died before this ran (a program's imports take a second or more on
    a loaded machine, and supervisord calls it RUNNING after one) sends nothing: this
    process already has another parent. So after asking, the parent is compared with the
    pid supervisord wrote before it started anything; another parent ends this process
    at once (SystemExit 0: nothing was started yet)."""
    if not os.environ.get("SUPERVISOR_ENABLED"):
        return
    die_with_parent(signal.SIGTERM)
    started_by = supervisord_pid(os.environ.get(STATE_VARIABLE, ""))
    if started_by and os.getppid() != started_by:
        raise SystemExit(0)


def supervisord_pid(state_dir: str) -> int | None:
    """The pid in STATE_DIR/run/supervisord.pid (supervisord.conf's pidfile), if any."""
    if not state_dir:
        return None
    try:
        return int((Path(state_dir) / "run" / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class NodeProcess:
    pid: int
    name: str       # supervisor's process name (authd_0), or "supervisord"
    command: str


SUPERVISORD_COMMANDS = ("supervisord", "lthn.node.supervisord_main")


def _read(pid: int) -> tuple[dict[str, str], list[str]] | None:
    """A live process's environment (as it was at its exec) and arguments; None when it
    is gone, a zombie, or not ours to read."""
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


def left_by(parent_marks: tuple[str, ...], argv: list[str]) -> list[NodeProcess]:
    """Live processes whose command line is exactly `argv` and whose parent's command line
    has none of `parent_marks`: a squid of this state dir's config left by an lthn-squid
    that was killed (SIGKILL) alone, now a child of init, not one a live lthn-squid runs."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if _command_line(entry) != argv or not _alive(int(entry)):
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = fh.read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if not any(mark in " ".join(_command_line(parent) or []) for mark in parent_marks):
            found.append(NodeProcess(int(entry), os.path.basename(argv[0]), " ".join(argv)))
    return found


def _command_line(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return raw.split("\0")[:-1]


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
