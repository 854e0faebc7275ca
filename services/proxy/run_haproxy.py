"""lthn-haproxy: write haproxy.cfg and the active-authid map, then become haproxy.

Run by supervisord in the foreground. The map is written from the ledger right before
haproxy starts, so a restarted haproxy never admits from a stale list (issue #4); authd
then keeps it in sync over the admin socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lthn.config import Config
from lthn.files import write_atomically
from lthn.haproxy.contract import authid_map_path, map_file_text
from lthn.haproxy.firewall_files import prepare_run_files
from lthn.ledger import Ledger, LedgerError
from lthn.tls import CertificateError, CertificateMistake, certificate_problem, ensure_certificates
from services.proxy import foreground, haproxy_config

HAPROXY = "haproxy"


def config_path(config: Config) -> Path:
    return config.state / "run" / "haproxy.cfg"


def prepare(config: Config) -> Path:
    """Certificates, map and config on disk; returns the config path. Raises on failure."""
    problem = config.proxy.certificate and certificate_problem(config.proxy.certificate)
    if problem:
        # before anything is written; lthn-node run says the same, exit 2 (#14)
        raise CertificateMistake(problem)
    run = config.state / "run"
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    if not config.proxy.certificate:
        ensure_certificates(config.certificate_path.parent)
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
        print(f"lthn-haproxy: {note}", file=sys.stderr)
    path = config_path(config)
    write_atomically(path, haproxy_config.render(config), mode=0o600)
    return path


def check(path: Path) -> tuple[bool, str]:
    result = subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True,
                            text=True, check=False)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


PROGRAM = foreground.ForegroundProgram(
    HAPROXY, prepare, check, command=lambda path: [HAPROXY, "-db", "-f", str(path)],
    # a configured certificate that haproxy cannot serve is the operator's to fix
    config_errors=(CertificateMistake,), failures=(OSError, LedgerError, CertificateError))


def main(argv: list[str] | None = None) -> int:
    args, config = foreground.parse(
        "Write the node's haproxy config and active-authid map, then run haproxy in the "
        "foreground.", argv)
    return PROGRAM.run(config, args.test)


if __name__ == "__main__":
    raise SystemExit(main())
