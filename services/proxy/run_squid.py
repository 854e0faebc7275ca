"""lthn-squid: write squid.conf, then run squid (foreground, `-N`) as its child, for
supervisord; signals are passed on, and squid ends when lthn-squid or supervisord does."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lthn.config import Config
from lthn.exits import EXIT_OK
from lthn.files import write_atomically
from lthn.haproxy.firewall_files import prepare_run_files
from lthn.refusals import Refusal
from lthn.stop_signals import StopSignals
from services.proxy import foreground, squid_config

log = logging.getLogger(__name__)
SQUID = "squid"


class HostsFileError(Exception):
    """squid could not read the configured hosts file (it reads it as its own user)."""


def prepare(config: Config) -> Path:
    run = config.state / "run"
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    user = squid_config.effective_user()
    hosts = Path(config.proxy.hosts_file or "/etc/hosts")
    if not squid_config.readable_by(hosts, user):
        # unreadable, squid would silently ask DNS for every name in it (issue #10)
        raise HostsFileError(f"proxy.hosts_file: squid runs as user {user or 'you'} and "
                             f"cannot read {hosts}; make it and its directories readable")
    # the destination deny files it reads (#17), from the operator's lists
    for note in prepare_run_files(config, bans=None):
        print(f"lthn-squid: {note}", file=sys.stderr)
    sp = squid_config.paths(config)
    own_page = squid_config.reachable_by(sp.errors, user)
    if own_page:
        squid_config.prepare(config, user)
    else:
        log.warning("squid: user %s cannot enter %s; refusals use squid's standard "
                    "%s page (haproxy still answers %s)", user, config.state,
                    squid_config.STANDARD_DENY_PAGE, Refusal.DENY_DESTINATION.code)
    # squid never reads a half-written file
    write_atomically(sp.config, squid_config.render(config, user=user, own_error_page=own_page),
                     mode=0o644)
    return sp.config


def check(path: Path) -> tuple[bool, str]:
    result = subprocess.run([SQUID, "-k", "parse", "-f", str(path)], capture_output=True,
                            text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    problems = [x for x in lines if "FATAL" in x or "ERROR" in x]
    return result.returncode == 0 and not problems, "\n".join(problems or lines[-5:])


def _idle_until_stopped() -> None:
    """Stay up doing nothing, so supervisord shows the program RUNNING, not FATAL."""
    signals = StopSignals().install((signal.SIGTERM, signal.SIGINT))
    while not signals.stop_asked:
        time.sleep(0.5)  # the handlers only record; looked at twice a second


PROGRAM = foreground.ForegroundProgram(
    SQUID, prepare, check,
    # no disk cache, so no `squid -z`; -d 1 sends squid's log to stderr for supervisord
    command=lambda path: [SQUID, "-N", "-d", "1", "-f", str(path)],
    config_errors=(HostsFileError,), failures=(OSError,),
    # a child, not an exec: squid's change of user would undo die_with_supervisord (#14)
    as_child=True)


def main(argv: list[str] | None = None) -> int:
    args, config = foreground.parse(
        "Write the node's squid config, then run squid in the foreground.", argv)
    if config.proxy.backend != "squid":
        log.info("squid: not needed, proxy.backend is %s", config.proxy.backend)
        if not args.test:
            _idle_until_stopped()
        return EXIT_OK
    return PROGRAM.run(config, args.test)


if __name__ == "__main__":
    raise SystemExit(main())
