"""What lthn-haproxy and lthn-squid share: write the config, check it with the real
program, then run that program as this process's child and stay its small parent
(issue #15), so a running haproxy or squid can take a new config without a restart:

- SIGHUP (what `lthn-node reload` sends through supervisord): the node config is read
  again; the program's config is written beside the old one, checked by the program
  itself, and only then put in place and applied (haproxy: a seamless master-worker
  reload; squid: a reconfigure). A config that fails either check is logged and the
  running program keeps its old one.
- the machine's addresses change (lthn/node_addresses.py): the program is told at once
  (haproxy: its runtime ACL; squid: a reconfigure).
- SIGTERM / SIGINT: passed on; the child gets CHILD_STOP_SECONDS, then SIGKILL. When the
  child ends, this process ends with its exit status, and supervisord starts both again.

The child dies with this process, and this process with supervisord (#14: PR_SET_PDEATHSIG,
lthn/node/orphans.py); squid, which changes user and so loses that request, is found by
its pid file and stopped at the next start instead when this process was SIGKILLed.
"""

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
from pathlib import Path

from lthn import config as config_mod
from lthn import logs
from lthn.cli_args import parse_with_config
from lthn.config import Config
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.files import write_atomically
from lthn.node.orphans import die_with_supervisord
from lthn.node_addresses import AddressListError, AddressWatcher
from lthn.process import die_with_parent
from lthn.schema import ConfigError
from lthn.stop_signals import SignalPipe

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHILD_STOP_SECONDS = 10.0
ADDRESS_SETTLE_SECONDS = 0.2   # kernel notifications come in bursts: one change per burst


def take_signals() -> None:
    """First thing in main(): until the program runs, SIGINT and SIGTERM end this process
    at once, whatever the disposition it inherited (a background job's SIGINT is ignored);
    writing the configs has nothing to finish (files are replaced whole). And this process
    dies with supervisord (#14)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    die_with_supervisord()


def parse(description: str, argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    """`-c/--config` and `-t/--test`; the config loaded (exit 2 on a mistake), logs set."""
    take_signals()
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-t", "--test", action="store_true",
                      help="write and check the config, then exit without starting")
    mode.add_argument("--check-reload", action="store_true",
                      help="render the config beside the running one and check it, touching "
                      "nothing (what `lthn-node reload` asks before it reloads)")
    return parse_with_config(parser, argv)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (its clean stop) when this parent dies."""
    die_with_parent(signal.SIGTERM)


class ForegroundProgram:
    """A real program the node writes a config for, then runs as its child."""

    name = ""                                       # the executable, also its Debian package
    config_errors: tuple[type[Exception], ...] = ()  # from prepare: the operator's mistake
    failures: tuple[type[Exception], ...] = (OSError,)  # from prepare: anything else

    def __init__(self, config: Config) -> None:
        self.config = config

    # --- what each program says ---
    def config_path(self) -> Path:
        raise NotImplementedError

    def write(self, addresses: list[str], path: Path) -> None:
        """Write the program's config to `path` and what it reads beside it."""
        raise NotImplementedError

    def write_config(self, path: Path) -> None:
        """Write only the program's config to `path` (what it reads beside it exists)."""
        raise NotImplementedError

    def check(self, path: Path) -> tuple[bool, str]:
        """(valid, the program's own words) for the config at `path`."""
        raise NotImplementedError

    def command(self, path: Path) -> list[str]:
        raise NotImplementedError

    def reload_child(self, child: subprocess.Popen) -> None:
        """The new config is in place: make the running program use it."""
        raise NotImplementedError

    def addresses_changed(self, addresses: list[str], child: subprocess.Popen) -> None:
        """The machine's addresses changed: make the running program refuse the new ones."""
        raise NotImplementedError

    # --- shared ---
    def pid_path(self) -> Path:
        return self.config.state / "run" / f"{self.name}.pid"

    def prepare(self, addresses: list[str]) -> Path:
        run = self.config.state / "run"
        run.mkdir(parents=True, exist_ok=True)
        os.chmod(run, 0o700)
        path = self.config_path()
        self.write(addresses, path)
        return path

    def run(self, test_only: bool) -> int:
        """Exit codes as the daemons'; with `test_only`, stop after the check."""
        if shutil.which(self.name) is None:
            print(f"Error: {self.name} is not installed (apt-get install {self.name})",
                  file=sys.stderr)
            return EXIT_FAILED
        try:
            # the operator's mistake before anything is written (#14)
            self.check_inputs()
        except self.config_errors as exc:
            print(f"Error: {self.config.source}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            watcher = AddressWatcher()
        except AddressListError as exc:
            print(f"Error: {self.name}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        try:
            try:
                path = self.prepare(watcher.addresses)
            except self.config_errors as exc:
                print(f"Error: {self.config.source}: {exc}", file=sys.stderr)
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
            return Parent(self, watcher).run(self.command(path))
        finally:
            watcher.close()

    def check_reload(self) -> int:
        """`--check-reload`: would a reload with this config be accepted? Touches nothing
        the running program reads."""
        if shutil.which(self.name) is None:
            print(f"Error: {self.name} is not installed (apt-get install {self.name})",
                  file=sys.stderr)
            return EXIT_FAILED
        path = self.config_path()
        candidate = path.with_name(path.name + ".check")
        try:
            self.check_inputs()
            self.write_config(candidate)
            ok, output = self.check(candidate)
        except self.config_errors as exc:
            print(f"Error: {self.config.source}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except self.failures as exc:
            ok, output = False, str(exc)
        finally:
            candidate.unlink(missing_ok=True)
        if not ok:
            print(f"Error: {self.config.source}: {self.name} refuses the config rendered from "
                  f"it:\n{output}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"{self.config.source}: {self.name} accepts the config rendered from it")
        return EXIT_OK

    def check_inputs(self) -> None:
        """Raise one of `config_errors` for a setting the program cannot use."""

    def reload(self, addresses: list[str], child: subprocess.Popen) -> bool:
        """SIGHUP: the node config again, checked twice before the program sees it."""
        try:
            new = config_mod.load(self.config.source)
        except ConfigError as exc:
            log.error("%s: reload refused, the running config stays: %s", self.name, exc)
            return False
        old, self.config = self.config, new
        logs.setup(new.log_level)
        path = self.config_path()
        candidate = path.with_name(path.name + ".new")
        try:
            self.write(addresses, candidate)
            ok, output = self.check(candidate)
        except (*self.config_errors, *self.failures) as exc:
            ok, output = False, str(exc)
        if not ok:
            self.config = old
            candidate.unlink(missing_ok=True)
            log.error("%s: reload refused, the running config stays: %s", self.name,
                      output.strip().replace("\n", "; ")[:500])
            return False
        os.replace(candidate, path)
        self.reload_child(child)
        return True

    def stop_previous(self) -> None:
        """A child a killed parent left running (squid cannot die with its parent) would
        hold the port: stop it first."""
        try:
            pid = int(self.pid_path().read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.config_path()).encode() not in cmdline:
            return  # the pid was reused by another program
        log.warning("%s: stopping pid %d that a killed lthn-%s left running", self.name, pid,
                    self.name)
        for signum, wait in ((signal.SIGTERM, CHILD_STOP_SECONDS), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                    return
                time.sleep(0.05)  # polling a process that is not ours, against a deadline


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Parent:
    """The loop: one select on the child's end (a pidfd), signals (lthn.stop_signals.
    SignalPipe) and the address watcher. Signal handlers only record; the loop acts."""

    def __init__(self, program: ForegroundProgram, watcher: AddressWatcher) -> None:
        self.program = program
        self.watcher = watcher
        self.address_check_at: float | None = None

    def run(self, argv: list[str]) -> int:
        program = self.program
        program.stop_previous()
        with SignalPipe((*STOP_SIGNALS, signal.SIGHUP)) as signals:
            sys.stdout.flush()
            return self._supervise(argv, signals)

    def _supervise(self, argv: list[str], signals: SignalPipe) -> int:
        program = self.program
        # the same process group: supervisord's stopasgroup/killasgroup reach the child too
        child = subprocess.Popen(argv, preexec_fn=_die_with_parent)
        write_atomically(program.pid_path(), f"{child.pid}\n", mode=0o600)
        child_end = os.pidfd_open(child.pid)
        log.info("%s: started (pid %d)", program.name, child.pid)
        deadline: float | None = None
        stopping = False
        try:
            while True:
                waits = [self.watcher.seconds_to_due()]
                if self.address_check_at is not None:
                    waits.append(self.address_check_at - time.monotonic())
                if deadline is not None:
                    waits.append(deadline - time.monotonic())
                watched = [child_end, signals.fileno()]
                if self.watcher.fileno() >= 0:
                    watched.append(self.watcher.fileno())
                ready, _, _ = select.select(watched, [], [], max(0.0, min(waits)))
                if child_end in ready:
                    break
                if self.watcher.fileno() in ready and self.address_check_at is None:
                    self.address_check_at = time.monotonic() + ADDRESS_SETTLE_SECONDS
                for signum in signals.take():
                    if signum in STOP_SIGNALS:
                        stopping = True
                        child.send_signal(signal.SIGTERM)
                        if deadline is None:
                            deadline = time.monotonic() + CHILD_STOP_SECONDS
                    elif signum == signal.SIGHUP and not stopping:
                        log.info("%s: reload asked", program.name)
                        program.reload(self.watcher.addresses, child)
                if stopping:
                    if deadline is not None and time.monotonic() >= deadline:
                        log.error("%s: did not stop within %.0f s; killing it", program.name,
                                  CHILD_STOP_SECONDS)
                        child.kill()
                        deadline = None
                    continue
                due = (self.address_check_at is not None
                       and time.monotonic() >= self.address_check_at) or self.watcher.due()
                if due:
                    self.address_check_at = None
                    changed = self.watcher.check()
                    if changed is not None:
                        program.addresses_changed(changed, child)
        finally:
            os.close(child_end)
        code = child.wait()
        program.pid_path().unlink(missing_ok=True)
        if not stopping and code != 0:
            log.error("%s: ended by itself with status %d", program.name, code)
        return code if code >= 0 else 128 - code
