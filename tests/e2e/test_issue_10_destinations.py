"""Issue 10: a paying client never reaches the node itself or the provider's networks.

One node for the module, with a hosts file for squid (names pointing at loopback and
into a network namespace this test makes), an extra denied range and a denied domain.
Traffic goes only to 127.0.0.0/8 and to the namespace. Its addresses must be global ones
(every documentation range is refused since issue #15): 192.88.99.0/26, from the
deprecated 6to4 relay anycast block nobody answers on any more; the fixture makes sure
the route to them is the namespace's before anything is sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.common import free_port, wait_for

NS_LINK = "192.88.99.1"        # the node's end of the veth pair
NS_DENIED = "192.88.99.2"      # inside the configured deny range 192.88.99.0/28
NS_ALLOWED = "192.88.99.40"    # outside it: reachable (the control)
NS_DENY_RANGE = "192.88.99.0/28"
NS_PREFIX = 26
NS_PORT = 8080

_NS_SERVER = """
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        print("request", self.server.server_address[0], self.path, flush=True)
        body = ("namespace origin " + self.server.server_address[0] + "\\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
servers = [ThreadingHTTPServer((a, int(sys.argv[1])), H) for a in sys.argv[2:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def namespace(tmp_path_factory) -> Iterator[Path]:
    """A network namespace with two addresses and an HTTP origin logging each request."""
    tag = os.getpid() % 10**7
    ns, near, far = f"lthn-t{tag}", f"lt{tag}a", f"lt{tag}b"
    log = tmp_path_factory.mktemp("netns") / "origin.log"
    proc = None
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", far, "netns", ns)
        _ip("addr", "add", f"{NS_LINK}/{NS_PREFIX}", "dev", near)
        _ip("link", "set", near, "up")
        for address in (NS_DENIED, NS_ALLOWED):
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{address}/{NS_PREFIX}", "dev", far)
        _ip("netns", "exec", ns, "ip", "link", "set", far, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        with open(log, "w") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _NS_SERVER,
                                     str(NS_PORT), NS_DENIED, NS_ALLOWED], stdout=out,
                                    stderr=subprocess.STDOUT)
        wait_for(lambda: "ready" in log.read_text(), timeout=10, what="namespace origin up")
        for address in (NS_DENIED, NS_ALLOWED):
            # global addresses: nothing may be sent unless they route into the namespace
            route = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True,
                                   text=True, timeout=10, check=True).stdout
            assert f'"dev":"{near}"' in route, route
        yield log
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", near], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _requests_seen(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("request")]


@pytest.fixture(scope="module")
def hosts_file() -> Iterator[Path]:
    """squid's hosts file; squid reads it as its own user, so not under pytest's 0700 dir."""
    directory = Path(tempfile.mkdtemp(prefix="lthn-hosts-", dir="/tmp"))
    os.chmod(directory, 0o755)
    hosts = directory / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n"
                     "127.0.0.1 evil-local.test\n"
                     f"{NS_DENIED} ns-denied.test\n{NS_ALLOWED} ns-allowed.test\n")
    os.chmod(hosts, 0o644)
    yield hosts
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def pn(proxy_node_factory, namespace, hosts_file):
    return proxy_node_factory({"proxy": {"hosts_file": str(hosts_file),
                                         "deny_networks": [NS_DENY_RANGE],
                                         "deny_domains": ["blocked.test"]}})


@pytest.fixture(scope="module")
def paid(pn):
    return pn.pay_and_wait(timeout=5.0)


def _assert_refused(pn, paid, answer, destination):
    assert (answer.status, answer.lthn_status) == (403, "DENY_DESTINATION"), answer
    event = pn.wait_refusal("DENY_DESTINATION", destination)
    assert (event.source, event.authid, event.kind) == ("127.0.0.1", paid, "proxy")


def test_issue_10_wallet_rpc_is_refused_for_get_and_connect(pn, paid):
    port = pn.regtest.provider.port
    answer = pn.client.request("POST", f"http://127.0.0.1:{port}/json_rpc", authid=paid,
                               headers=[("Content-Length", "0")])
    _assert_refused(pn, paid, answer, f"127.0.0.1:{port}")
    response, sock, _ = pn.client.tunnel(f"127.0.0.1:{port}", authid=paid)
    sock.close()
    _assert_refused(pn, paid, response, f"127.0.0.1:{port}")


@pytest.mark.parametrize("method,target", [
    ("GET", "http://localhost:{port}/"),
    ("GET", "http://evil-local.test:{port}/"),      # a name mapped to 127.0.0.1 for squid
    ("GET", "http://127.1:{port}/"),                 # only squid knows this is loopback
    ("GET", "http://2130706433:{port}/"),
    ("GET", "http://127.0.0.1:{port}/"),
    ("GET", "http://[::ffff:127.0.0.1]:{port}/"),
    ("CONNECT", "localhost:{port}"),
    ("CONNECT", "127.0.0.1:{port}"),
], ids=["localhost", "hosts-file-name", "short-form", "decimal", "literal", "mapped-v6",
        "connect-name", "connect-literal"])
def test_issue_10_loopback_is_refused_and_nothing_connects(pn, paid, tcp_canary, method, target):
    canary = tcp_canary()
    target = target.format(port=canary.port)
    if method == "CONNECT":
        answer, sock, _ = pn.client.tunnel(target, authid=paid)
        sock.close()
        destination = target
    else:
        answer = pn.client.request(method, target, authid=paid)
        destination = target.split("/")[2]
    _assert_refused(pn, paid, answer, destination)
    assert canary.connections == []


def test_issue_10_connect_to_443_on_a_loopback_name_is_refused(pn, paid):
    answer, sock, _ = pn.client.tunnel("evil-local.test:443", authid=paid)
    sock.close()
    _assert_refused(pn, paid, answer, "evil-local.test:443")


def test_issue_10_node_services_on_loopback_are_refused(pn, paid):
    """authd's status answerer and squid itself, asked for directly."""
    for port in (pn.config.proxy.status_port, pn.config.proxy.squid_port):
        answer = pn.client.request("GET", f"http://127.0.0.1:{port}/status", authid=paid)
        _assert_refused(pn, paid, answer, f"127.0.0.1:{port}")


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{squid}/squid-internal-mgr/info",
    "http://ns-allowed.test:8080/squid-internal-mgr/menu",
    "http://lethean-exit/squid-internal-static/icons/SN.png",
], ids=["mgr", "mgr-public-name", "static"])
def test_issue_10_squid_internal_urls_are_refused(pn, paid, namespace, target):
    before = len(_requests_seen(namespace))
    answer = pn.client.request("GET", target.format(squid=pn.config.proxy.squid_port),
                               authid=paid)
    assert (answer.status, answer.lthn_status) == (403, "DENY_DESTINATION"), answer
    assert len(_requests_seen(namespace)) == before


def test_issue_10_cache_manager_scheme_never_reaches_squid(pn, paid, namespace):
    """haproxy's parser itself rejects a cache_object: URI before any rule runs: since
    issue #15 it closes the connection without its own 400 page, and logs BAD_REQUEST."""
    before = len(_requests_seen(namespace))
    with pytest.raises(ConnectionError):
        pn.client.request("GET", "cache_object://localhost/info", authid=paid)
    event = pn.wait_refusal("BAD_REQUEST", "")
    assert event.source == "127.0.0.1"
    assert len(_requests_seen(namespace)) == before


def test_issue_10_the_configured_exceptions_work_for_get_and_connect(pn, paid):
    answer = pn.client.request("GET", pn.origin.url("/allowed"), authid=paid)
    assert (answer.status, answer.body) == (200, b"origin page /allowed\n")
    response, sock, rest = pn.client.tunnel(f"127.0.0.1:{pn.tcp_origin.port}", authid=paid)
    with sock:
        assert response.status == 200, response
        while b"\n" not in rest:
            rest += sock.recv(4096)
        assert rest == b"hello from the tcp origin\n"


def test_issue_10_configured_deny_range_refuses_inside_and_passes_outside(pn, paid, namespace):
    # the control: outside the range, by address and by name, the origin answers
    for host in (NS_ALLOWED, "ns-allowed.test"):
        answer = pn.client.request("GET", f"http://{host}:{NS_PORT}/control", authid=paid)
        assert (answer.status, answer.body) == (200, f"namespace origin {NS_ALLOWED}\n".encode())
    for host in (NS_DENIED, "ns-denied.test"):
        answer = pn.client.request("GET", f"http://{host}:{NS_PORT}/inside", authid=paid)
        _assert_refused(pn, paid, answer, f"{host}:{NS_PORT}")
    seen = _requests_seen(namespace)
    assert not [line for line in seen if NS_DENIED in line or "/inside" in line], seen


def test_issue_10_connect_only_to_443_and_denied_domains(pn, paid, namespace):
    before = len(_requests_seen(namespace))
    answer, sock, _ = pn.client.tunnel(f"ns-allowed.test:{NS_PORT}", authid=paid)
    sock.close()
    # a port refusal has its own code since issue #15
    assert (answer.status, answer.lthn_status) == (403, "DENY_PORT"), answer
    pn.wait_refusal("DENY_PORT", f"ns-allowed.test:{NS_PORT}")
    answer = pn.client.request("GET", "http://www.blocked.test/", authid=paid)
    _assert_refused(pn, paid, answer, "www.blocked.test")
    assert len(_requests_seen(namespace)) == before


def test_issue_10_unused_port_stays_unused(tcp_canary):
    """The canary itself notices a connection (so the tests above can fail)."""
    import socket
    canary = tcp_canary()
    socket.create_connection(("127.0.0.1", canary.port)).close()
    wait_for(lambda: canary.connections, timeout=5, what="canary seeing a connection")
    assert free_port() != canary.port
