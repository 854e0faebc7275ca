"""The generated squid.conf on the real squid 5.7, asked directly (no haproxy): refusals
after name resolution for plain HTTP and CONNECT, and which error page marks them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lthn.config import parse
from services.proxy import squid_config
from tests.fixtures.common import free_port, read_head, wait_for
from tests.fixtures.proxy import TcpListener


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """squid drops to its own user: its files must be reachable (pytest's dir is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="lthn-squid-", dir="/tmp"))
    os.chmod(directory, 0o711)
    yield directory
    shutil.rmtree(directory)


def start_squid(state: Path, hosts: Path, exception_port: int, own_page: bool
                ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = parse({"provider": {"id": "ab" * 32}, "state_dir": str(state),
                 "proxy": {"squid_port": port, "hosts_file": str(hosts),
                           "dns_servers": ["127.0.0.1"],
                           "allow_destinations": [f"127.0.0.1:{exception_port}"]}}, "t.yaml")
    user = squid_config.effective_user()
    if own_page:
        squid_config.prepare(cfg, user)
    (state / "run").mkdir(parents=True, exist_ok=True)
    conf = state / "run" / "squid.conf"
    conf.write_text(squid_config.render(cfg, user=user, own_error_page=own_page))
    proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
             timeout=15, what="squid listening")
    return proc, port


def ask(port: int, request: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = read_head(sock)
    head = data.split(b"\r\n\r\n")[0].decode("iso-8859-1").split("\r\n")
    error = next((h.split(":", 1)[1].strip() for h in head
                  if h.lower().startswith("x-squid-error:")), "")
    return int(head[0].split()[1]), error


@pytest.mark.parametrize("own_page,page", [(True, "ERR_LTHN_DENY_DESTINATION"),
                                           (False, "ERR_ACCESS_DENIED")])
def test_squid_refuses_loopback_after_resolution_and_lets_the_exception_through(
        traversable_dir, own_page, page):
    hosts = traversable_dir / "hosts"
    hosts.write_text("127.0.0.1 localhost inside.test\n")
    os.chmod(hosts, 0o644)
    canary, origin = TcpListener(None), TcpListener(b"hi\n")
    proc, port = start_squid(traversable_dir / "state", hosts, origin.port, own_page)
    try:
        for request in (f"GET http://inside.test:{canary.port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
                        f"GET http://localhost:{canary.port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
                        f"CONNECT inside.test:{canary.port} HTTP/1.1\r\n\r\n",
                        "CONNECT inside.test:443 HTTP/1.1\r\n\r\n",
                        f"GET http://127.0.0.1:{port}/squid-internal-mgr/info HTTP/1.1\r\n"
                        "Host: x\r\n\r\n"):
            status, error = ask(port, request)
            assert (status, error.split()[0]) == (403, page), request
        status, _ = ask(port, f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n")
        assert status == 200
        wait_for(lambda: origin.connections, timeout=5, what="squid connecting the exception")
        assert canary.connections == [] and len(origin.connections) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        canary.close()
        origin.close()
