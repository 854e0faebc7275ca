"""lthn-openvpn: write OpenVPN's server config, load the node's nftables table, run OpenVPN.

Run by supervisord in the foreground, like lthn-haproxy for haproxy, with one difference:
it does not exec. The egress table must go when OpenVPN stops (issue #18), so this
process stays as OpenVPN's parent: it forwards the signals supervisord sends (OpenVPN runs
in its own process group, so it gets each exactly once and can tell its clients it is
going, instead of dying half-way through on a second SIGTERM), waits for it, then removes
the table and exits with OpenVPN's status. OpenVPN dies with this process (PDEATHSIG) if
it is killed outright; the table then stays, filtering, until the next start replaces it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from lthn.cli_args import parse_with_config
from lthn.config import Config
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.files import write_atomically
from lthn.node.orphans import die_with_supervisord
from lthn.process import die_with_parent
from lthn.tls import CertificateError, CertificatePaths, ensure_certificates
from services.vpn import egress, openvpn_config

OPENVPN = "openvpn"
NFT = "nft"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def prepare(config: Config) -> Path:
    """Certificates and server config on disk; returns the config path. Raises on failure."""
    run = config.state / "run"
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    tls: CertificatePaths = ensure_certificates(config.state / "tls")
    path = openvpn_config.config_path(config)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_atomically(path, openvpn_config.render(config, tls), mode=0o600)
    return path


def outside_interface(config: Config) -> str | None:
    return config.vpn.outside_interface or egress.default_interface()


def run_openvpn(config: Config, path: Path, outside: str) -> int:
    """Table up, OpenVPN in the foreground until it ends, table down."""
    socket = config.vpn_management_socket
    socket.unlink(missing_ok=True)   # left by an OpenVPN that was killed
    egress.setup(config, outside)
    child: subprocess.Popen | None = None
    early: list[int] = []   # signals that came before OpenVPN was started

    def forward(signum: int, _frame: Any) -> None:
        if child is None:
            early.append(signum)
        elif child.poll() is None:
            child.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        sys.stdout.flush()
        child = subprocess.Popen([OPENVPN, "--config", str(path)], stdin=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=die_with_parent)
        for signum in early:
            child.send_signal(signum)
        code = child.wait()   # retried across the signal handler (PEP 475)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        egress.teardown(config)
    if code < 0:
        print(f"openvpn: ended by signal {signal.Signals(-code).name}")
        return EXIT_OK if -code in (signal.SIGTERM, signal.SIGINT) else EXIT_FAILED
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the node's OpenVPN server config and nftables table, then run "
                    "OpenVPN in the foreground (VPN mode).")
    parser.add_argument("-t", "--test", action="store_true",
                        help="write the config and check the nftables table, then exit")
    args, config = parse_with_config(parser, argv)
    die_with_supervisord()  # SIGTERM (passed on to OpenVPN) when supervisord dies (#14)
    if not config.vpn.enabled:
        print(f"Error: {config.source}: vpn.enabled: VPN mode is off; lthn-openvpn has "
              "nothing to run", file=sys.stderr)
        return EXIT_CONFIG
    for program, package in ((OPENVPN, "openvpn"), (NFT, "nftables")):
        if shutil.which(program) is None:
            print(f"Error: {program} is not installed (apt-get install {package})",
                  file=sys.stderr)
            return EXIT_FAILED
    outside = outside_interface(config)
    if outside is None:
        print(f"Error: {config.source}: vpn.outside_interface: not set and there is no "
              "default route to take it from; name the interface client traffic leaves by",
              file=sys.stderr)
        return EXIT_CONFIG
    if not (Path("/sys/class/net") / outside).exists():
        print(f"Error: {config.source}: vpn.outside_interface: there is no interface "
              f'"{outside}" here (see `ip link`)', file=sys.stderr)
        return EXIT_CONFIG
    try:
        path = prepare(config)
    except (OSError, CertificateError) as exc:
        print(f"Error: cannot prepare openvpn: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.test:
        plan = egress.plan_for(config, outside, ())
        result = subprocess.run([NFT, "-c", "-f", "-"], input=egress.render(plan), text=True,
                                capture_output=True, check=False)
        if result.returncode != 0:
            print(f"Error: nft refuses the generated table: {result.stderr.strip()}",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"{path}: written; nftables table {egress.FAMILY} {egress.TABLE} is valid")
        return EXIT_OK
    try:
        return run_openvpn(config, path, outside)
    except egress.EgressError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
