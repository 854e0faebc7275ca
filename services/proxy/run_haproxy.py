"""lthn-haproxy: write haproxy.cfg and the active-authid map, then run haproxy in
master-worker mode as this process's child (services/proxy/foreground.py).

The map is written from the ledger right before haproxy starts and before every reload,
so a new haproxy process never admits from a stale list (issue #4); authd then keeps it in
sync over the admin socket. A reload (SIGHUP) is seamless (issue #15): haproxy's master
re-reads the config and hands the listening sockets to a new worker; the old worker
finishes what it serves (tunnels end after `hard-stop-after`). The node's own addresses
are a runtime ACL, changed over the admin socket when the machine's addresses change.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

from lthn.config import Config
from lthn.files import write_atomically
from lthn.haproxy import contract
from lthn.haproxy.contract import authid_map_path, map_file_text
from lthn.haproxy.firewall_files import prepare_run_files
from lthn.haproxy.runtime import HaproxyAdmin, HaproxyUnavailable, parse_show_info
from lthn.ledger import Ledger, LedgerError
from lthn.tls import (
    CertificateError,
    CertificateMistake,
    certificate_problem,
    ensure_certificates,
)
from services.proxy import destinations, foreground, haproxy_config

log = logging.getLogger(__name__)

HAPROXY = "haproxy"
RELOAD_SECONDS = 30.0   # a new worker answers within this after SIGUSR2, or it failed


def config_path(config: Config) -> Path:
    return config.state / "run" / "haproxy.cfg"


def write_ledger_files(config: Config) -> None:
    """The active-authid map, and the firewall's lists and bans, as the ledger and the
    operator's files say now: what a new haproxy (or a reloaded worker) loads."""
    ledger = Ledger.open(config.ledger_path)
    try:
        active = ledger.active_authids()
        bans = {row.ip: row.expires for row in ledger.bans()}
    finally:
        ledger.close()
    # haproxy never reads a half-written file
    write_atomically(authid_map_path(config), map_file_text(active), mode=0o600)
    # the source lists and bans (#17): firewalld keeps them from here on, without reloads
    for note in prepare_run_files(config, bans):
        log.warning("haproxy: %s", note)


def parse_show_acl(answer: str) -> set[str]:
    """`show acl <file>` -> its patterns (`<ptr> <pattern>` lines)."""
    return {parts[1] for parts in (line.split() for line in answer.splitlines())
            if len(parts) == 2 and parts[0].startswith("0x")}


class Haproxy(foreground.ForegroundProgram):
    name = HAPROXY
    # a configured certificate that haproxy cannot serve is the operator's to fix
    config_errors = (CertificateMistake,)
    failures = (OSError, LedgerError, CertificateError)

    def config_path(self) -> Path:
        return config_path(self.config)

    def own_path(self) -> Path:
        return destinations.own_addresses_path(self.config, HAPROXY)

    def admin(self) -> HaproxyAdmin:
        return HaproxyAdmin(contract.admin_socket_path(self.config), timeout=2.0)

    def check_inputs(self) -> None:
        # before anything is written; lthn-node run says the same, exit 2 (#14)
        problem = self.config.proxy.certificate and certificate_problem(
            self.config.proxy.certificate)
        if problem:
            raise CertificateMistake(problem)

    def write(self, addresses: list[str], path: Path) -> None:
        config = self.config
        self.check_inputs()
        if not config.proxy.certificate:
            ensure_certificates(config.certificate_path.parent)
        write_ledger_files(config)
        write_atomically(self.own_path(), destinations.own_address_lines(addresses),
                         mode=0o600)
        self.write_config(path)

    def write_config(self, path: Path) -> None:
        write_atomically(path, haproxy_config.render(self.config), mode=0o600)

    def check(self, path: Path) -> tuple[bool, str]:
        result = subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True,
                                text=True, check=False)
        return result.returncode == 0, (result.stdout + result.stderr).strip()

    def command(self, path: Path) -> list[str]:
        # -W: master-worker, so SIGUSR2 reloads without a refused connection; -db: in the
        # foreground, for supervisord
        return [HAPROXY, "-W", "-db", "-f", str(path)]

    def worker_pid(self) -> str | None:
        try:
            return parse_show_info(self.admin().command("show info"))["Pid"]
        except (HaproxyUnavailable, ValueError, KeyError):
            return None

    def reload_child(self, child: subprocess.Popen) -> None:
        before = self.worker_pid()
        write_ledger_files(self.config)  # the new worker loads the ledger's list, not a stale one
        child.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + RELOAD_SECONDS
        while time.monotonic() < deadline:
            after = self.worker_pid()
            if after is not None and after != before:
                log.info("haproxy: reloaded (worker pid %s, was %s)", after, before)
                # an address that changed while the new worker read its files
                self.sync_own_addresses()
                return
            time.sleep(0.05)  # polling the admin socket against the deadline above
        log.error("haproxy: no new worker within %.0f s of the reload; see haproxy's lines "
                  "above", RELOAD_SECONDS)

    def addresses_changed(self, addresses: list[str], child: subprocess.Popen) -> None:
        write_atomically(self.own_path(), destinations.own_address_lines(addresses),
                         mode=0o600)
        self.sync_own_addresses()

    def sync_own_addresses(self) -> None:
        """Make the running worker's own-address ACL equal to the file (add/del acl)."""
        path = str(self.own_path())
        wanted = set(Path(path).read_text().split())
        admin = self.admin()
        try:
            present = parse_show_acl(admin.command(f"show acl {path}"))
            for pattern in sorted(wanted - present):
                answer = admin.command(f"add acl {path} {pattern}").strip()
                if answer:
                    log.error("haproxy: add acl %s failed: %s", pattern, answer)
            for pattern in sorted(present - wanted):
                admin.command(f"del acl {path} {pattern}")
        except HaproxyUnavailable as exc:
            # the next worker reads the file, which is already right
            log.warning("haproxy: own addresses not applied at runtime: %s", exc)
            return
        if wanted != present:
            log.info("haproxy: own addresses now %s", ", ".join(sorted(wanted)))


def main(argv: list[str] | None = None) -> int:
    args, config = foreground.parse(
        "Write the node's haproxy config and active-authid map, then run haproxy "
        "(master-worker) as a child that follows reloads and address changes.", argv)
    if args.check_reload:
        return Haproxy(config).check_reload()
    return Haproxy(config).run(args.test)


if __name__ == "__main__":
    raise SystemExit(main())
