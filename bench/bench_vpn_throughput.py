"""VPN tunnel throughput through the node vs the same OpenVPN without it (issue #18).

Three network namespaces of this program's own (tests/fixtures/vpn.py: client, node,
outside, joined by veth pairs). A real OpenVPN client in the client namespace sends
`--megabytes` over TCP through the tunnel to a sink in the outside namespace, which times
first byte to end; best and median, the two setups started in turn `--rounds` times.

- node: lthn-openvpn (the node's rendered server config, its nftables table: egress filter
  and masquerade) with lthn-vpnd answering the login from the ledger;
- baseline: the same openvpn binary on the same rendered config, with the login answered
  by `auth-user-pass-verify /bin/true` instead of the management interface, no nftables
  table, plain forwarding and a route back from the outside (no NAT).

    python bench/bench_vpn_throughput.py [--megabytes 50] [--rounds 3] [--per-start 2]
                                         [--proto udp|tcp]

Needs root (namespaces). Expected: the same within noise (the node adds nothing to the
data path but a few nftables rules and NAT).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

from benchlib import wait  # noqa: E402

from lthn import access  # noqa: E402
from lthn import config as config_mod  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from lthn.node.supervision import tool  # noqa: E402
from services.vpn import openvpn_config  # noqa: E402
from tests.fixtures.vpn import (  # noqa: E402
    NODE_OUTSIDE,
    OUTSIDE_INTERFACE,
    OUTSIDE_SERVER,
    POOL,
    Namespaces,
    Process,
    VpnClient,
    run,
)

AUTHID = "2B00112233445566"
PORT = 1194
SINK_PORT = 9000
BUSD = "import sys; from services.busd.main import main; sys.exit(main(sys.argv[1:]))"

SINK = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(8)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    total, first = 0, None
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        if first is None:
            first = time.perf_counter()
        total += len(data)
    took = time.perf_counter() - (first or time.perf_counter())
    conn.sendall(f"{total} {took}\\n".encode())
    conn.close()
"""

SENDER = """
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.create_connection((host, port), timeout=30)
chunk = b"x" * (1 << 16)
left = size
while left > 0:
    sock.sendall(chunk[:min(left, len(chunk))])
    left -= len(chunk)
sock.shutdown(socket.SHUT_WR)
print(sock.makefile().readline().strip())
"""


def measure(ns: Namespaces, megabytes: int) -> float:
    """MB/s of one transfer client -> outside sink, as the sink timed it."""
    size = megabytes * 1_000_000
    result = run(*ns.exec(ns.client), sys.executable, "-c", SENDER, OUTSIDE_SERVER,
                 str(SINK_PORT), str(size), timeout=120)
    total, took = result.stdout.split()
    if int(total) != size:
        raise SystemExit(f"bench: the sink got {total} bytes of {size}")
    return size / float(took) / 1e6


def node_config(work: Path, proto: str) -> Path:
    path = work / "node.yaml"
    path.write_text(yaml.safe_dump({
        "provider": {"id": "ab" * 32}, "state_dir": str(work / "state"), "log_level": "info",
        "wallet": {"dialect": "monero"},
        "services": [{"id": "2B", "name": "vpn", "type": "vpn", "cost": "0.001",
                      "firstPrePaidMinutes": 0}],
        "vpn": {"enabled": True, "port": PORT, "proto": proto, "network": POOL,
                "outside_interface": OUTSIDE_INTERFACE,
                "allow_networks": [f"{OUTSIDE_SERVER}/32"]}}))
    return path


def with_node(ns: Namespaces, work: Path, path: Path, args: argparse.Namespace) -> list[float]:
    config = config_mod.load(path)
    (work / "state").mkdir(mode=0o700, exist_ok=True)
    ledger = Ledger.open(config.ledger_path)
    with ledger.transaction() as tx:
        tx.ensure_authid(AUTHID, "2B")
        tx.credit(AUTHID, 10**15)
        access.reevaluate(tx, tx.authid(AUTHID), access.rules_for(config, config.services[0]),
                          "bench")
    ledger.close()
    tag = os.urandom(3).hex()   # each start logs to files of its own
    procs = [Process([*ns.exec(ns.node), sys.executable, "-c", BUSD, "-c", str(path)],
                     work / f"busd-{tag}.log"),
             Process([*ns.exec(ns.node), tool("lthn-vpnd"), "-c", str(path)],
                     work / f"vpnd-{tag}.log"),
             Process([*ns.exec(ns.node), tool("lthn-openvpn"), "-c", str(path)],
                     work / f"openvpn-{tag}.log")]
    try:
        procs[1].wait_log("logins are answered", timeout=30)
        return through_client(ns, work, f"node{len(procs)}", args, procs)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=15)


def through_client(ns: Namespaces, work: Path, name: str, args: argparse.Namespace,
                   procs: list) -> list[float]:
    """Connect a VPN client (added to `procs`, for the caller to stop) and measure
    `per_start` transfers through it."""
    client = VpnClient(ns, work / "clients", f"{name}-{os.urandom(3).hex()}",
                       work / "state" / "tls" / "ca.pem", PORT, AUTHID, AUTHID,
                       proto=args.proto)
    procs.append(client)
    client.wait_connected(timeout=30)
    return [measure(ns, args.megabytes) for _ in range(args.per_start)]


def without_node(ns: Namespaces, work: Path, path: Path,
                 args: argparse.Namespace) -> list[float]:
    config = config_mod.load(path)
    text = openvpn_config.config_path(config).read_text()
    lines = [line for line in text.splitlines() if not line.startswith("management")]
    lines += ["script-security 2", "auth-user-pass-verify /bin/true via-env"]
    plain = work / "plain.conf"
    plain.write_text("\n".join(lines) + "\n")
    run(*ns.exec(ns.node), "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run("ip", "-n", ns.outside, "route", "replace", POOL, "via", NODE_OUTSIDE)
    server = Process([*ns.exec(ns.node), "openvpn", "--config", str(plain)],
                     work / f"plain-openvpn-{os.urandom(3).hex()}.log")
    procs = [server]
    try:
        server.wait_log("Initialization Sequence Completed", timeout=30)
        return through_client(ns, work, "plain", args, procs)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=15)
        run("ip", "-n", ns.outside, "route", "del", POOL, check=False)
        run(*ns.exec(ns.node), "sysctl", "-qw", "net.ipv4.ip_forward=0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each setup is started, alternating (the machine's load "
                        "changes; alternating spreads it over both)")
    parser.add_argument("--per-start", type=int, default=2, help="transfers per start")
    parser.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (it makes network namespaces)")
    tmp = tempfile.mkdtemp(prefix="bench-vpn-tp-") if args.keep else None
    ns = Namespaces()
    with tempfile.TemporaryDirectory(prefix="bench-vpn-tp-") as scratch:
        work = Path(tmp or scratch)
        try:
            ns.create()
            sink = Process([*ns.exec(ns.outside), sys.executable, "-c", SINK,
                            str(SINK_PORT)], work / "sink.log")
            wait(lambda: "listening" in sink.log(), 10, "the sink")
            path = node_config(work, args.proto)
            node: list[float] = []
            plain: list[float] = []
            for _ in range(args.rounds):
                node += with_node(ns, work, path, args)
                plain += without_node(ns, work, path, args)
            sink.stop()
        finally:
            ns.delete()
    best, base = max(node), max(plain)
    print(f"{args.megabytes} MB client -> outside over {args.proto}: {len(node)} transfers "
          f"each, {args.rounds} alternating starts")
    print(f"through the node (lthn-openvpn, vpnd, nftables filter + NAT): best {best:.1f} MB/s"
          f"  median {statistics.median(node):.1f} MB/s")
    print(f"baseline (same OpenVPN and config, no node): best {base:.1f} MB/s  "
          f"median {statistics.median(plain):.1f} MB/s")
    print(f"ratio node/baseline: best {best / base:.2f}  median "
          f"{statistics.median(node) / statistics.median(plain):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
