"""Issue 15, destinations by rule: haproxy refuses every non-global literal address (IPv6
forms carrying an IPv4 address included), ports outside the web ports and names that
cannot be names before anything is looked up; and the node follows its own addresses
while it runs.

Nothing a probe asks for can leave the machine:
- the first node's back end is a loopback canary instead of squid (`proxy.backend`), so
  a request haproxy failed to refuse arrives there, never at its destination;
- the node's new own address lives on an interface this test makes: local, so even a
  wrong answer reaches only the canary listening on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lthn.haproxy.runtime import HaproxyAdmin
from lthn.refusals import Refusal
from services.proxy import destinations
from tests.fixtures.common import wait_for
from tests.fixtures.proxy import FIRST_PAYMENT, TcpListener, in_haproxy_map
from tests.fixtures.regtest import new_authid

GLOBAL = "192.88.99.7"       # a global address (deprecated 6to4 relay anycast); only ever
                             # sent to the canary back end, never routed
OWN_NEW = "192.88.99.200"    # the node's address that appears while it runs


@pytest.fixture(scope="module")
def canary_backend() -> Iterator[TcpListener]:
    listener = TcpListener(None)   # accepts and closes: what haproxy passes, it counts
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def pn(proxy_node_factory, canary_backend):
    return proxy_node_factory({"proxy": {"backend": f"127.0.0.1:{canary_backend.port}"}})


@pytest.fixture(scope="module")
def paid(pn):
    """Paid and active (the status answer says so: with a canary back end, no fetch does)."""
    authid = new_authid("1A")
    pn.regtest.pay(authid, FIRST_PAYMENT)
    wait_for(lambda: pn.client.request("GET", "http://remote.lethean/status", headers=[
        ("X-LTHN-PaymentID", authid), ("X-LTHN-MgmtID", pn.config.provider.id)]).status == 200,
        timeout=10, what=f"authid {authid} active")
    # the status answer reads the ledger; haproxy admits by its map, which authd fills
    # after: a request sent before that was answered NO_PAYMENT (a CI run under load)
    wait_for(lambda: in_haproxy_map(pn.config, authid), timeout=10,
             what=f"authid {authid} in haproxy's map")
    return authid


def connect(pn, target: str, authid: str):
    """CONNECT; the answer with its body (the tunnel is closed)."""
    answer, sock, rest = pn.client.tunnel(target, authid=authid)
    with sock:
        length = int(answer.header("content-length") or 0)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    answer.body = rest[:length]
    return answer


def _refused(pn, paid, answer, code: str, destination: str) -> None:
    refusal = Refusal.of(code)
    assert refusal is not None
    assert (answer.status, answer.lthn_status, answer.body) == (
        refusal.http_status, code, refusal.body), answer
    event = pn.wait_refusal(code, destination)
    assert (event.source, event.authid) == ("127.0.0.1", paid)


LITERALS = [
    "198.18.0.1", "198.19.255.254", "192.0.2.55", "198.51.100.9", "203.0.113.9",
    "240.0.0.1", "255.255.255.255", "100.64.0.1", "192.0.0.8", "169.254.169.254",
    "[64:ff9b::a9fe:a9fe]", "[64:ff9b::169.254.169.254]", "[64:ff9b::a00:1]",
    "[64:ff9b::7f00:1]", "[64:ff9b:1::a9fe:a9fe]", "[::ffff:a9fe:a9fe]",
    "[::ffff:169.254.169.254]", "[0:0:0:0:0:ffff:7f00:1]", "[::ffff:0:a9fe:a9fe]",
    "[::a9fe:a9fe]", "[::127.0.0.1]", "[2002:a9fe:a9fe::1]", "[2002:808:808::1]",
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "[2001::1]", "[2001:db8::1]", "[100::1]",
    "[fec0::1]", "[3fff::1]", "[5f00::1]", "[fd00::1]", "[fe80::1]", "[ff02::1]", "[::]",
    "[::1]",
]


@pytest.mark.parametrize("host", LITERALS)
def test_issue_15_non_global_literals_are_refused_before_the_back_end(
        pn, paid, canary_backend, host):
    before = len(canary_backend.connections)
    answer = pn.client.request("GET", f"http://{host}:8080/", authid=paid)
    _refused(pn, paid, answer, "DENY_DESTINATION", f"{host}:8080")
    answer = connect(pn, f"{host}:443", paid)
    _refused(pn, paid, answer, "DENY_DESTINATION", f"{host}:443")
    assert len(canary_backend.connections) == before


def test_issue_15_a_global_address_passes_and_a_back_end_failure_is_ours(pn, paid,
                                                                         canary_backend):
    """The control: a global destination on a web port reaches the back end; the back end
    closing without an answer is haproxy's 502, said in our words, not haproxy's page (not
    an event: the request was admitted, and admitted requests are not logged, #16)."""
    before = len(canary_backend.connections)
    answer = pn.client.request("GET", f"http://{GLOBAL}:8080/", authid=paid)
    wait_for(lambda: len(canary_backend.connections) > before, timeout=5,
             what="the request reaching the canary back end")
    error = Refusal.PROXY_ERROR
    assert (answer.status, answer.lthn_status, answer.body) == (502, error.code, error.body)
    assert answer.header("server") is None


@pytest.mark.parametrize("port", [21, 22, 25, 43, 110, 1024])
def test_issue_15_plain_http_only_to_web_ports(pn, paid, canary_backend, port):
    before = len(canary_backend.connections)
    for host in (GLOBAL, "mail.example.invalid"):
        answer = pn.client.request("GET", f"http://{host}:{port}/", authid=paid)
        _refused(pn, paid, answer, "DENY_PORT", f"{host}:{port}")
    answer = connect(pn, f"{GLOBAL}:{port}", paid)
    _refused(pn, paid, answer, "DENY_PORT", f"{GLOBAL}:{port}")
    assert len(canary_backend.connections) == before


def test_issue_15_other_schemes_are_refused(pn, paid, canary_backend):
    before = len(canary_backend.connections)
    for url in (f"ftp://{GLOBAL}:2121/", f"gopher://{GLOBAL}:7070/"):
        answer = pn.client.request("GET", url, authid=paid)
        _refused(pn, paid, answer, "DENY_DESTINATION", url.split("/")[2])
    assert len(canary_backend.connections) == before


@pytest.mark.parametrize("host", ["a" * 64 + ".example", ("a" * 60 + ".") * 5 + "example",
                                  "ok." + "b" * 200 + ".example"],
                         ids=["long-label", "long-name", "long-label-in-long-name"])
def test_issue_15_invalid_host_names_are_refused_at_once(pn, paid, canary_backend, host):
    """They held a request for 35 s while squid asked DNS; now nothing is asked."""
    before = len(canary_backend.connections)
    started = time.monotonic()
    answer = pn.client.request("GET", f"http://{host}/", authid=paid)
    assert time.monotonic() - started < 2.0
    _refused(pn, paid, answer, "BAD_HOST", host)
    answer = connect(pn, f"{host}:443", paid)
    _refused(pn, paid, answer, "BAD_HOST", f"{host}:443")
    assert len(canary_backend.connections) == before


# --- the node's own addresses, followed while it runs ---

@pytest.fixture(scope="module")
def hosts_file() -> Iterator[Path]:
    """squid's hosts file; squid reads it as its own user, so not under pytest's 0700 dir."""
    directory = Path(tempfile.mkdtemp(prefix="lthn-hosts-", dir="/tmp"))
    os.chmod(directory, 0o755)
    hosts = directory / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{OWN_NEW} own-new.test\n")
    os.chmod(hosts, 0o644)
    yield hosts
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def squid_node(proxy_node_factory, hosts_file):
    node = proxy_node_factory({"proxy": {"hosts_file": str(hosts_file)}})
    return node, node.pay_and_wait(timeout=5.0)


@pytest.fixture
def new_own_address() -> Iterator[str]:
    """OWN_NEW on an interface of this test's own (one end of a veth pair whose ends both
    stay here: no dummy driver on every kernel), removed afterwards."""
    link = f"lt15o{os.getpid() % 10**5}"
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", link + "p"],
                   check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "addr", "add", f"{OWN_NEW}/32", "dev", link], check=True,
                       capture_output=True, timeout=10)
        for end in (link, link + "p"):
            subprocess.run(["ip", "link", "set", end, "up"], check=True, capture_output=True,
                           timeout=10)
        yield link
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)


def _haproxy_own(pn) -> str:
    path = destinations.own_addresses_path(pn.config, "haproxy")
    return HaproxyAdmin(pn.config.haproxy_admin_socket).command(f"show acl {path}")


def test_issue_15_an_address_added_while_running_is_refused_by_haproxy_and_squid(
        squid_node, new_own_address):
    pn, paid = squid_node
    squid_log = len(pn.node.log_text("squid"))
    wait_for(lambda: f"{OWN_NEW}/32" in _haproxy_own(pn), timeout=10,
             what="haproxy's runtime ACL holding the new address")
    pn.node.wait_log("squid", "reconfiguring for the machine's new addresses", timeout=10,
                     after=squid_log)
    own = destinations.own_addresses_path(pn.config, "squid")
    assert f"{OWN_NEW}/32" in own.read_text()
    canary = TcpListener(None, host=OWN_NEW)
    try:
        # by literal (haproxy), and by a name only squid resolves (after its reconfigure:
        # keep asking until squid answers with the new list, then it must hold)
        answer = pn.client.request("GET", f"http://{OWN_NEW}:{canary.port}/", authid=paid)
        _refused(pn, paid, answer, "DENY_DESTINATION", f"{OWN_NEW}:{canary.port}")
        target = f"http://own-new.test:{canary.port}/"
        wait_for(lambda: pn.client.request("GET", target, authid=paid).lthn_status
                 == "DENY_DESTINATION", timeout=10, what="squid refusing the new address")
        answer = pn.client.request("GET", target, authid=paid)
        _refused(pn, paid, answer, "DENY_DESTINATION", f"own-new.test:{canary.port}")
        assert canary.connections == []
    finally:
        canary.close()
    subprocess.run(["ip", "link", "del", new_own_address], check=True, capture_output=True,
                   timeout=10)
    wait_for(lambda: f"{OWN_NEW}/32" not in _haproxy_own(pn), timeout=10,
             what="haproxy's runtime ACL without the removed address")
