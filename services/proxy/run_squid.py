"""lthn-squid: write squid.conf, then run squid (foreground, `-N`) as this process's child
(services/proxy/foreground.py). A reload (SIGHUP) and a change of the machine's addresses
both end in a squid reconfigure (SIGHUP to squid): it re-reads squid.conf and the
own-addresses file, keeping the connections it serves."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

from lthn.exits import EXIT_OK
from lthn.files import write_atomically
from lthn.haproxy.firewall_files import prepare_run_files
from lthn.stop_signals import StopSignals
from services.proxy import destinations, foreground, squid_config

log = logging.getLogger(__name__)
SQUID = "squid"


class HostsFileError(Exception):
    """squid could not read the configured hosts file (it reads it as its own user)."""


class Squid(foreground.ForegroundProgram):
    name = SQUID
    config_errors = (HostsFileError,)
    failures = (OSError,)

    def config_path(self) -> Path:
        return squid_config.config_path(self.config)

    def own_path(self) -> Path:
        return destinations.own_addresses_path(self.config, SQUID)

    def write(self, addresses: list[str], path: Path) -> None:
        self.check_inputs()
        # the destination deny files it reads (#17), from the operator's lists
        for note in prepare_run_files(self.config, bans=None):
            log.warning("squid: %s", note)
        # squid reads these as root (at start and at a reconfigure), never half-written
        write_atomically(self.own_path(), destinations.own_address_lines(addresses),
                         mode=0o600)
        self.write_config(path)

    def check_inputs(self) -> None:
        config = self.config
        user = squid_config.effective_user()
        hosts = Path(config.proxy.hosts_file or "/etc/hosts")
        if not squid_config.readable_by(hosts, user):
            # unreadable, squid would silently ask DNS for every name in it (issue #10)
            raise HostsFileError(f"proxy.hosts_file: squid runs as user {user or 'you'} and "
                                 f"cannot read {hosts}; make it and its directories readable")

    def write_config(self, path: Path) -> None:
        write_atomically(path, squid_config.render(self.config,
                                                   user=squid_config.effective_user()),
                         mode=0o600)

    def check(self, path: Path) -> tuple[bool, str]:
        result = subprocess.run([SQUID, "-k", "parse", "-f", str(path)], capture_output=True,
                                text=True, check=False)
        lines = (result.stdout + result.stderr).splitlines()
        problems = [x for x in lines if "FATAL" in x or "ERROR" in x]
        return result.returncode == 0 and not problems, "\n".join(problems or lines[-5:])

    def command(self, path: Path) -> list[str]:
        # no disk cache, so no `squid -z`; -d 1 sends squid's log to stderr for supervisord
        return [SQUID, "-N", "-d", "1", "-f", str(path)]

    def reload_child(self, child: subprocess.Popen) -> None:
        child.send_signal(signal.SIGHUP)   # squid -k reconfigure
        log.info("squid: reconfiguring with the new config")

    def addresses_changed(self, addresses: list[str], child: subprocess.Popen) -> None:
        write_atomically(self.own_path(), destinations.own_address_lines(addresses),
                         mode=0o600)
        child.send_signal(signal.SIGHUP)
        log.info("squid: reconfiguring for the machine's new addresses")


def _idle_until_stopped() -> None:
    """Stay up doing nothing, so supervisord shows the program RUNNING, not FATAL."""
    signals = StopSignals().install((signal.SIGTERM, signal.SIGINT))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload: still nothing to do
    while not signals.stop_asked:
        time.sleep(0.5)  # the handlers only record; looked at twice a second


def main(argv: list[str] | None = None) -> int:
    args, config = foreground.parse(
        "Write the node's squid config, then run squid as a child that follows reloads and "
        "address changes.", argv)
    if config.proxy.backend != "squid":
        log.info("squid: not needed, proxy.backend is %s", config.proxy.backend)
        if not (args.test or args.check_reload):
            _idle_until_stopped()
        return EXIT_OK
    if args.check_reload:
        return Squid(config).check_reload()
    return Squid(config).run(args.test)


if __name__ == "__main__":
    raise SystemExit(main())
