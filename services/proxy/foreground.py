"""What lthn-haproxy and lthn-squid share: render the config, check it with the real
program, then become that program so supervisord's signals and exit status are its own
(haproxy), or run it as this process's child (squid, see `run_as_child`)."""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lthn.cli_args import parse_with_config
from lthn.config import Config
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.node import orphans
from lthn.node.orphans import die_with_supervisord

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHILD_STOP_SECONDS = 10.0   # after a stop signal, the child gets this long, then SIGKILL


def take_signals() -> None:
    """First thing in main(): until the program runs, SIGINT and SIGTERM end this process
    at once, whatever the disposition it inherited (a background job's SIGINT is ignored);
    writing the configs has nothing to finish (files are replaced whole). And the program
    dies with supervisord: the request is kept across the exec (#14)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    die_with_supervisord()


def parse(description: str, argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    """`-c/--config` and `-t/--test`; the config loaded (exit 2 on a mistake), logs set."""
    take_signals()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-t", "--test", action="store_true",
                        help="write and check the config, then exit without starting")
    return parse_with_config(parser, argv)


@dataclass(frozen=True)
class ForegroundProgram:
    """A real program the node writes a config for, then becomes."""
    name: str                                     # the executable, also its Debian package
    prepare: Callable[[Config], Path]             # writes what it needs; the config's path
    check: Callable[[Path], tuple[bool, str]]     # (valid, the program's own words)
    command: Callable[[Path], list[str]]          # how it runs in the foreground
    config_errors: tuple[type[Exception], ...]    # from prepare: the operator's mistake
    failures: tuple[type[Exception], ...]         # from prepare: anything else that failed
    as_child: bool = False                        # run it as a child, not exec (squid)

    def run(self, config: Config, test_only: bool) -> int:
        """Exit codes as the daemons'; with `test_only`, stop after the check."""
        if shutil.which(self.name) is None:
            print(f"Error: {self.name} is not installed (apt-get install {self.name})",
                  file=sys.stderr)
            return EXIT_FAILED
        try:
            path = self.prepare(config)
        except self.config_errors as exc:
            print(f"Error: {config.source}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except self.failures as exc:
            print(f"Error: cannot prepare {self.name}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        ok, output = self.check(path)
        if not ok:
            print(f"Error: {path}: {self.name} refuses the generated config:\n{output}",
                  file=sys.stderr)
            return EXIT_FAILED
        if test_only:
            print(f"{path}: configuration is valid")
            return EXIT_OK
        argv = self.command(path)
        sys.stdout.flush()
        if self.as_child:
            # a live parent of such a child: lthn-squid, or its module run by a bench
            return run_as_child(argv, (f"lthn-{self.name}", f"run_{self.name}"))
        os.execvp(argv[0], argv)
        return EXIT_FAILED  # not reached: exec replaced this process


def run_as_child(argv: list[str], owner_marks: tuple[str, ...]) -> int:
    """Run the program as this process's child, passing SIGTERM, SIGINT and SIGHUP on, and
    end with it. For squid: started as root it changes to its own user, and that clears
    the request to die with supervisord, so this process keeps it instead (#14). On a stop
    signal the child has CHILD_STOP_SECONDS, then gets SIGKILL (supervisord may be gone).
    A child of the same command line that an earlier start left (its parent was killed,
    SIGKILL, and it is not a child of a live program of `owner_marks`) is stopped first."""
    # signals are numbers written to a pipe (set_wakeup_fd); one select waits for them
    # and for the child's end (a pidfd): nothing polls while the program runs
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)
    for signum in (*STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, lambda _n, _f: None)  # caught, so it reaches the pipe
    # an lthn-squid killed alone (SIGKILL) left its squid running, on the port this one
    # needs: stop it first (its command line names this state dir's config)
    left = orphans.left_by(owner_marks, argv)
    if left:
        log.warning("%s: stopping %s left running by an earlier start (pid %s)", argv[0],
                    argv[0], ", ".join(str(p.pid) for p in left))
        orphans.stop(left, timeout=5.0)
    # the same process group: supervisord's stopasgroup/killasgroup reach the child too
    child = subprocess.Popen(argv)
    child_end = os.pidfd_open(child.pid)
    deadline: float | None = None
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([child_end, wake_read], [], [], timeout)
        if child_end in ready:
            break
        if wake_read in ready:
            for signum in os.read(wake_read, 512):
                child.send_signal(signum)
                if signum in STOP_SIGNALS and deadline is None:
                    deadline = time.monotonic() + CHILD_STOP_SECONDS
        if deadline is not None and time.monotonic() >= deadline:
            child.kill()
            deadline = None
    code = child.wait()
    return code if code >= 0 else 128 - code
