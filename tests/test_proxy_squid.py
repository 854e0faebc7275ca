"""The generated squid.conf on the real squid 5.7, asked directly (no haproxy): refusals
after name resolution for plain HTTP and CONNECT, the marker haproxy reads them by, and
every non-global destination of lthn/destination_policy.py refused before squid connects.

The probes of issue #15 run where a wrong answer cannot leave the machine: squid is told
to send everything it lets through to a parent proxy that is a loopback canary
(`never_direct`), so a destination it failed to refuse shows up as a canary connection,
never as a packet to that destination.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lthn.config import parse
from lthn.refusals import Refusal
from services.proxy import destinations, squid_config
from tests.fixtures.common import free_port, read_head, wait_for
from tests.fixtures.proxy import TcpListener


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """squid drops to its own user: its hosts file must be reachable (pytest's dir is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="lthn-squid-", dir="/tmp"))
    os.chmod(directory, 0o711)
    yield directory
    shutil.rmtree(directory)


def start_squid(state: Path, hosts: Path, exception_port: int, extra: str = ""
                ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = parse({"provider": {"id": "ab" * 32}, "state_dir": str(state),
                 "proxy": {"squid_port": port, "hosts_file": str(hosts),
                           "dns_servers": ["127.0.0.1"],
                           "allow_destinations": [f"127.0.0.1:{exception_port}"]}}, "t.yaml")
    (state / "run").mkdir(parents=True, exist_ok=True)
    destinations.own_addresses_path(cfg, "squid").write_text(
        destinations.own_address_lines(["127.0.0.1", "192.88.99.201"]))
    conf = state / "run" / "squid.conf"
    conf.write_text(squid_config.render(cfg, user=squid_config.effective_user()) + extra)
    proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
             timeout=15, what="squid listening")
    return proc, port


def ask(port: int, request: str) -> tuple[int, str]:
    """(status, error code in X-LTHN-Squid) of squid's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = read_head(sock)
    head = data.split(b"\r\n\r\n")[0].decode("iso-8859-1").split("\r\n")
    marker = next((h.split(":", 1)[1].strip() for h in head
                   if h.lower().startswith(squid_config.MARKER_HEADER.lower() + ":")), "")
    return int(head[0].split()[1]), marker.split(" ")[0]


class RequestCanary:
    """A loopback listener that records every request squid forwards to it (squid also
    opens and closes bare connections to a parent to see that it is up: not counted)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if data:
                    self.requests.append(data)

    def close(self) -> None:
        self.sock.close()


DENIED = squid_config.refusal_marker(Refusal.DENY_DESTINATION)
PORT = squid_config.refusal_marker(Refusal.DENY_PORT)


def test_squid_refuses_loopback_after_resolution_and_lets_the_exception_through(
        traversable_dir):
    hosts = traversable_dir / "hosts"
    hosts.write_text("127.0.0.1 localhost inside.test\n")
    os.chmod(hosts, 0o644)
    canary, origin = TcpListener(None), TcpListener(b"hi\n")
    proc, port = start_squid(traversable_dir / "state", hosts, origin.port)
    try:
        for request, marker in (
                (f"GET http://inside.test:{canary.port}/ HTTP/1.1\r\nHost: x\r\n\r\n", DENIED),
                (f"GET http://localhost:{canary.port}/ HTTP/1.1\r\nHost: x\r\n\r\n", DENIED),
                (f"CONNECT inside.test:{canary.port} HTTP/1.1\r\n\r\n", PORT),
                ("CONNECT inside.test:443 HTTP/1.1\r\n\r\n", DENIED),
                ("GET http://inside.test:25/ HTTP/1.1\r\nHost: x\r\n\r\n", PORT),
                (f"GET http://127.0.0.1:{port}/squid-internal-mgr/info HTTP/1.1\r\n"
                 "Host: x\r\n\r\n", DENIED)):
            assert ask(port, request) == (302, marker), request
        status, _ = ask(port, f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n")
        assert status == 200
        wait_for(lambda: origin.connections, timeout=5, what="squid connecting the exception")
        assert canary.connections == [] and len(origin.connections) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        canary.close()
        origin.close()


# names in squid's hosts file for every kind of address the policy refuses (issue #15)
PROBES = {
    "benchmark.test": "198.18.0.1", "doc1.test": "192.0.2.55", "doc3.test": "203.0.113.9",
    "reserved.test": "240.0.0.1", "cgnat.test": "100.64.0.1", "ietf.test": "192.0.0.8",
    "metadata.test": "169.254.169.254", "own.test": "192.88.99.201",
    "nat64.test": "64:ff9b::a9fe:a9fe", "nat64-local.test": "64:ff9b:1::a9fe:a9fe",
    "nat64-own.test": "64:ff9b::c058:63c9", "mapped.test": "::ffff:169.254.169.254",
    "translated.test": "::ffff:0:a9fe:a9fe", "compatible.test": "::a9fe:a9fe",
    "sixtofour.test": "2002:a9fe:a9fe::1", "sixtofour-global.test": "2002:808:808::1",
    "teredo.test": "2001:0:4136:e378:8000:63bf:3fff:fdd2", "doc6.test": "2001:db8::1",
    "discard.test": "100::1", "sitelocal.test": "fec0::1", "ula.test": "fd00::1",
    "doc6b.test": "3fff::1", "loopback6.test": "::1", "multicast6.test": "ff02::1",
}


def test_squid_refuses_every_non_global_destination_before_connecting(traversable_dir):
    """A name resolving to any refused address (embedded IPv4 forms included) is refused
    by squid's dst ACLs; the control, a global address, reaches the canary parent."""
    hosts = traversable_dir / "hosts"
    hosts.write_text("".join(f"{a} {n}\n" for n, a in PROBES.items())
                     + "192.88.99.7 global.test\n")
    os.chmod(hosts, 0o644)
    canary = RequestCanary()
    parent = (f"\ncache_peer 127.0.0.1 parent {canary.port} 0 no-query no-digest\n"
              "never_direct allow all\n")
    proc, port = start_squid(traversable_dir / "state", hosts, free_port(), extra=parent)
    try:
        for name in PROBES:
            for request in (f"GET http://{name}/ HTTP/1.1\r\nHost: {name}\r\n\r\n",
                            f"CONNECT {name}:443 HTTP/1.1\r\n\r\n"):
                assert ask(port, request) == (302, DENIED), (name, request)
        assert canary.requests == []
        ask(port, "GET http://global.test/ HTTP/1.1\r\nHost: global.test\r\n\r\n")
        wait_for(lambda: canary.requests, timeout=5, what="the control reaching the canary")
        assert canary.requests[0].startswith(b"GET http://global.test/ ")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        canary.close()
