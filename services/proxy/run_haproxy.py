"""lthn-haproxy: write haproxy.cfg and the active-authid map, then become haproxy.

Run by supervisord in the foreground. The map is written from the ledger right before
haproxy starts, so a restarted haproxy never admits from a stale list (issue #4); authd
then keeps it in sync over the admin socket.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lthn import logs
from lthn.config import Config
from lthn.daemon import EXIT_CONFIG, EXIT_FAILED, config_argument, load_config_or_exit
from lthn.ledger import Ledger, LedgerError
from lthn.tls import CertificateError, ensure_certificates
from services.authd.map_sync import map_file_text
from services.proxy import haproxy_config
from services.proxy.foreground import check_then_exec

HAPROXY = "haproxy"


def config_path(config: Config) -> Path:
    return config.state / "run" / "haproxy.cfg"


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # haproxy never reads a half-written file


def prepare(config: Config) -> Path:
    """Certificates, map and config on disk; returns the config path. Raises on failure."""
    run = config.state / "run"
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    if not config.proxy.certificate:
        ensure_certificates(config.certificate_path.parent)
    elif not config.certificate_path.exists():
        raise FileNotFoundError(f"proxy.certificate: {config.certificate_path} does not exist")
    ledger = Ledger.open(config.ledger_path)
    try:
        active = ledger.active_authids()
    finally:
        ledger.close()
    _write(haproxy_config.authid_map_path(config), map_file_text(active))
    path = config_path(config)
    _write(path, haproxy_config.render(config))
    return path


def check(path: Path) -> tuple[bool, str]:
    result = subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True,
                            text=True, check=False)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the node's haproxy config and active-authid map, then run "
                    "haproxy in the foreground.")
    config_argument(parser)
    parser.add_argument("-t", "--test", action="store_true",
                        help="write and check the config, then exit without starting")
    args = parser.parse_args(argv)
    config = load_config_or_exit(args.config)
    logs.setup(config.log_level)
    if shutil.which(HAPROXY) is None:
        print("Error: haproxy is not installed (apt-get install haproxy)", file=sys.stderr)
        return EXIT_FAILED
    try:
        path = prepare(config)
    except FileNotFoundError as exc:
        print(f"Error: {config.source}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, LedgerError, CertificateError) as exc:
        print(f"Error: cannot prepare haproxy: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return check_then_exec("haproxy", path, check, [HAPROXY, "-db", "-f", str(path)],
                           args.test)


if __name__ == "__main__":
    raise SystemExit(main())
