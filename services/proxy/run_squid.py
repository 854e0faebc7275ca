"""lthn-squid: write squid.conf, then become squid (foreground, `-N`), for supervisord."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lthn import logs
from lthn.config import Config
from lthn.daemon import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, config_argument, load_config_or_exit
from services.proxy import squid_config
from services.proxy.foreground import check_then_exec

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
    sp = squid_config.paths(config)
    own_page = squid_config.reachable_by(sp.errors, user)
    if own_page:
        squid_config.prepare(config, user)
    else:
        log.warning("squid: user %s cannot enter %s; refusals use squid's standard "
                    "ERR_ACCESS_DENIED page (haproxy still answers DENY_DESTINATION)",
                    user, config.state)
    text = squid_config.render(config, user=user, own_error_page=own_page)
    tmp = sp.config.with_name(sp.config.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, sp.config)
    return sp.config


def check(path: Path) -> tuple[bool, str]:
    result = subprocess.run([SQUID, "-k", "parse", "-f", str(path)], capture_output=True,
                            text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    problems = [x for x in lines if "FATAL" in x or "ERROR" in x]
    return result.returncode == 0 and not problems, "\n".join(problems or lines[-5:])


def _idle_until_stopped() -> None:
    """Stay up doing nothing, so supervisord shows the program RUNNING, not FATAL."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the node's squid config, then run squid in the foreground.")
    config_argument(parser)
    parser.add_argument("-t", "--test", action="store_true",
                        help="write and check the config, then exit without starting")
    args = parser.parse_args(argv)
    config = load_config_or_exit(args.config)
    logs.setup(config.log_level)
    if config.proxy.backend != "squid":
        log.info("squid: not needed, proxy.backend is %s", config.proxy.backend)
        if not args.test:
            _idle_until_stopped()
        return EXIT_OK
    if shutil.which(SQUID) is None:
        print("Error: squid is not installed (apt-get install squid)", file=sys.stderr)
        return EXIT_FAILED
    try:
        path = prepare(config)
    except HostsFileError as exc:
        print(f"Error: {config.source}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"Error: cannot prepare squid: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # no disk cache, so no `squid -z`; -d 1 sends squid's log to stderr for supervisord
    return check_then_exec("squid", path, check, [SQUID, "-N", "-d", "1", "-f", str(path)],
                           args.test)


if __name__ == "__main__":
    raise SystemExit(main())
