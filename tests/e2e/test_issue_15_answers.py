"""Issue 15, answers: nothing reveals the node's software or internal ports; every answer
the node makes itself (squid's failures included) carries X-LTHN-Status and one line of
text; every refusal and bad request becomes an event with the real source address.

One node with squid. Names squid cannot resolve are `.invalid`, asked of a loopback
resolver that answers NXDOMAIN (tests/fixtures/dns.py); a destination that refuses the
connection is a closed loopback port made an exception; every request stays on loopback.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lthn.refusals import Refusal
from tests.fixtures.common import free_port, read_head, wait_for
from tests.fixtures.dns import NxdomainResolver

SQUID_HEADERS = ("x-cache", "x-cache-lookup", "via", "x-squid-error", "x-lthn-squid",
                 "mime-version")


class PosingOrigin(BaseHTTPRequestHandler):
    """A destination that pretends to be the node or squid in its answer's headers."""

    def do_GET(self) -> None:
        body = b"posing origin\n"
        self.send_response(403)
        self.send_header("X-LTHN-Squid", "ERR_ACCESS_DENIED")
        self.send_header("X-Squid-Error", "ERR_ACCESS_DENIED 0")
        self.send_header("X-LTHN-Status", "NO_PAYMENT")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def resolver() -> Iterator[NxdomainResolver]:
    dns = NxdomainResolver()
    yield dns
    dns.close()


@pytest.fixture(scope="module")
def posing_origin() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PosingOrigin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


CLOSED_PORT = free_port()   # nothing listens: a destination that refuses connections


@pytest.fixture(scope="module")
def pn(proxy_node_factory, resolver, posing_origin):
    return proxy_node_factory({"proxy": {
        "dns_servers": [resolver.host],
        "allow_destinations": [f"127.0.0.1:{CLOSED_PORT}", f"127.0.0.1:{posing_origin}"]}})


@pytest.fixture(scope="module")
def paid(pn):
    return pn.pay_and_wait(timeout=5.0)


def _ours(answer, refusal: Refusal) -> None:
    """The node's own answer: status, code and one line from the catalogue, nothing else."""
    assert (answer.status, answer.lthn_status, answer.body) == (
        refusal.http_status, refusal.code, refusal.body), answer
    assert answer.header("content-type") == "text/plain"
    assert not [h for h in (*SQUID_HEADERS, "server") if answer.header(h)], answer.headers


# --- no fingerprints ---

def test_issue_15_the_client_sees_the_destination_not_squid(pn, paid):
    answer = pn.client.request("GET", pn.origin.url("/clean"), authid=paid)
    assert (answer.status, answer.body) == (200, b"origin page /clean\n")
    assert not [h for h in SQUID_HEADERS if answer.header(h)], answer.headers
    # the Server header there is the origin's own (Python's), passed on untouched
    assert answer.header("server").startswith("BaseHTTP/")


def test_issue_15_the_destination_sees_the_client_not_squid(pn, paid):
    pn.origin.received.clear()
    pn.client.request("GET", pn.origin.url("/no-cc"), authid=paid)
    pn.client.request("GET", pn.origin.url("/one-cc"), authid=paid,
                      headers=[("Cache-Control", "no-transform")])
    pn.client.request("GET", pn.origin.url("/two-cc"), authid=paid,
                      headers=[("Cache-Control", "no-store"), ("Cache-Control", "max-age=5")])
    # one line with two directives is one header (haproxy's hdr_cnt counts its values)
    pn.client.request("GET", pn.origin.url("/one-line-cc"), authid=paid,
                      headers=[("Cache-Control", "no-cache, max-age=0")])
    seen = {path: {k.lower(): v for k, v in headers.items()}
            for _, path, headers in pn.origin.received}
    assert "cache-control" not in seen["/no-cc"]          # squid added max-age=259200
    assert seen["/one-cc"]["cache-control"] == "no-transform"
    assert seen["/two-cc"]["cache-control"] == "no-store, max-age=5"
    assert seen["/one-line-cc"]["cache-control"] == "no-cache, max-age=0"
    for headers in seen.values():
        assert not [h for h in headers if h in ("via", "x-forwarded-for", "forwarded")
                    or h.startswith(("x-lthn-", "x-itns-", "x-squid"))], headers


def test_issue_15_the_status_answer_does_not_name_its_server(pn, paid):
    answer = pn.client.request("GET", "http://remote.lethean/status", headers=[
        ("X-LTHN-PaymentID", paid), ("X-LTHN-MgmtID", pn.config.provider.id)])
    assert answer.status == 200 and answer.header("server") is None, answer.headers


def test_issue_15_a_destination_cannot_pose_as_the_node_or_squid(pn, paid, posing_origin):
    before = len(pn.refusals())
    answer = pn.client.request("GET", f"http://127.0.0.1:{posing_origin}/", authid=paid)
    assert (answer.status, answer.body) == (403, b"posing origin\n")
    assert answer.lthn_status is None and answer.header("x-lthn-squid") is None
    # not a refusal of the node: no event (the next one seen is the control below)
    pn.client.request("GET", "http://localhost/", authid=paid)
    pn.wait_refusal("DENY_DESTINATION", "localhost")
    assert [m.reason for m in pn.refusals()[before:]] == ["DENY_DESTINATION"]


# --- squid's failures, in our words ---

def test_issue_15_unresolvable_name(pn, paid, resolver):
    answer = pn.client.request("GET", "http://no-such-name.invalid/", authid=paid)
    _ours(answer, Refusal.DNS_FAILURE)
    assert "no-such-name.invalid" in resolver.questions
    event = pn.wait_refusal("DNS_FAILURE", "no-such-name.invalid")
    assert (event.source, event.authid) == ("127.0.0.1", paid)


def test_issue_15_destination_refusing_the_connection(pn, paid):
    answer = pn.client.request("GET", f"http://127.0.0.1:{CLOSED_PORT}/", authid=paid)
    _ours(answer, Refusal.CONNECT_FAILED)
    pn.wait_refusal("CONNECT_FAILED", f"127.0.0.1:{CLOSED_PORT}")
    answer, sock, rest = pn.client.tunnel(f"127.0.0.1:{CLOSED_PORT}", authid=paid)
    with sock:
        while len(rest) < int(answer.header("content-length") or 0):
            rest += sock.recv(4096)
    answer.body = rest
    _ours(answer, Refusal.CONNECT_FAILED)


def test_issue_15_request_squid_cannot_read(pn, paid):
    """A host with a control character passes haproxy and squid finds the URL invalid."""
    answer = pn.client.request("GET", "/", authid=paid, headers=[("Host", "a\x01b.example")])
    _ours(answer, Refusal.BAD_REQUEST)
    pn.wait_refusal("BAD_REQUEST", "a\x01b.example")


# --- refusals that vanished: now events, with the real source address ---

def _raw(pn, data: bytes, tls: bool = True, source: str = "127.0.0.7") -> bytes:
    """Send bytes from `source` (an address of loopback), return what came back."""
    sock = socket.create_connection((pn.config.proxy.bind, pn.config.proxy.port), timeout=10,
                                    source_address=(source, 0))
    if tls:
        sock = pn.client.context.wrap_socket(sock, server_hostname=None)
    with sock:
        sock.sendall(data)
        try:
            return read_head(sock)
        except (ConnectionError, ssl.SSLError):
            return b""


def test_issue_15_a_host_that_is_not_utf8_is_still_an_event(pn):
    answer = _raw(pn, b"GET http://\xff\xfe.example/ HTTP/1.1\r\nHost: \xff\xfe.example\r\n"
                      b"Connection: close\r\n\r\n")
    refused = [_raw(pn, b"GET / HTTP/1.1\r\nHost: caf\xe9.example\r\nConnection: close\r\n\r\n")
               for _ in range(3)]
    assert all(b"x-lthn-status: no_payment" in head.lower() for head in refused), refused
    # haproxy's parser takes the first (bytes outside the URI's grammar), the rest are
    # refused for want of a payment; each is an event from 127.0.0.7
    wait_for(lambda: len([m for m in pn.refusals() if m.source == "127.0.0.7"
                          and m.reason == "NO_PAYMENT" and "caf" in m.destination]) == 3,
             timeout=5, what="three NO_PAYMENT events for the Latin-1 host")
    event = next(m for m in pn.refusals() if m.source == "127.0.0.7" and "caf" in m.destination)
    assert event.destination == "caf\\xe9.example"
    assert answer == b"" or b"x-lthn-status" in answer.lower()


def test_issue_15_a_request_haproxy_cannot_parse_is_an_event(pn):
    assert _raw(pn, b"GARBAGE\r\n\r\n", source="127.0.0.8") == b""   # no page naming haproxy
    event = wait_for(lambda: next((m for m in pn.refusals() if m.source == "127.0.0.8"), None),
                     timeout=5, what="an event for the unparsable request")
    assert (event.reason, event.kind, event.authid) == ("BAD_REQUEST", "proxy", "")


def test_issue_15_a_failed_tls_handshake_is_an_event(pn):
    assert _raw(pn, b"GET / HTTP/1.1\r\n\r\n", tls=False, source="127.0.0.9") == b""
    event = wait_for(lambda: next((m for m in pn.refusals() if m.source == "127.0.0.9"), None),
                     timeout=5, what="an event for the failed handshake")
    assert event.reason == "BAD_TLS"


def test_issue_15_a_clean_start_logs_no_warnings(pn, paid):
    """Before: squid's user could not enter the state dir; authd dropped haproxy's own
    lines as not ours. The node here has served the tests above."""
    for program in pn.node.programs:
        lines = [x for x in pn.node.log_text(program).splitlines()
                 if "warning" in x.lower() or " ERROR " in x or "Traceback" in x
                 or "[ALERT]" in x]
        assert lines == [], (program, lines)
