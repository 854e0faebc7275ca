"""Issue 4, authd side: haproxy admits paid authids, refuses the rest, answers status.

One node (busd, paymentd, authd, haproxy, squid under supervisord) for the module, on a
real regtest wallet; the client speaks TLS 1.2 without SNI like Lethean's.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from lthn.haproxy.contract import authid_map_path
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from tests.fixtures.common import wait_for
from tests.fixtures.regtest import new_authid

STATUS_KEYS = {"id", "serviceid", "created", "modified", "activated", "spending", "balance",
               "overall", "left", "confirmations", "charged_cnt", "discharged_cnt", "txid",
               "txid_history"}


@pytest.fixture(scope="module")
def pn(proxy_node_factory):
    return proxy_node_factory()


@pytest.fixture(scope="module")
def paid(pn):
    """An authid paid through the real wallet, admitted within 3 s of the payment."""
    return pn.pay_and_wait(timeout=3.0)


def test_issue_4_paid_authid_gets_the_origin_page_and_no_lthn_header_leaves(pn, paid):
    before = len(pn.origin.received)
    answer = pn.client.request("GET", pn.origin.url("/page?x=1"), authid=paid, headers=[
        ("X-LTHN-Reason", "internal"), ("X-ITNS-PaymentID", paid), ("X-Lthn-Other", "y")])
    assert answer.status == 200, answer
    assert answer.body == b"origin page /page?x=1\n"
    method, path, headers = pn.origin.received[before]
    assert (method, path) == ("GET", "/page?x=1")
    leaked = [h for h in headers if h.lower().startswith(("x-lthn-", "x-itns-"))
              or h.lower() in ("via", "x-forwarded-for", "forwarded")]
    assert leaked == []


@pytest.mark.parametrize("headers", [
    [("X-LTHN-PaymentID", "{lower}")],                              # lower case accepted
    [("X-ITNS-PaymentID", "{authid}")],                             # legacy v3 header
    [("X-LTHN-PaymentID", "{authid}"), ("X-LTHN-PaymentID", "{authid}")],  # status polls
    [("x-lthn-paymentid", "{authid}"), ("X-ITNS-PAYMENTID", "{lower}")],
], ids=["lower-case", "legacy", "twice", "both"])
def test_issue_4_header_variants_are_one_authid(pn, paid, headers):
    filled = [(k, v.format(authid=paid, lower=paid.lower())) for k, v in headers]
    answer = pn.client.request("GET", pn.origin.url("/v"), headers=filled)
    assert answer.status == 200, answer


def test_issue_4_every_standard_method_passes_head_included(pn, paid):
    for method in ("HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        answer = pn.client.request(method, pn.origin.url("/m"), authid=paid,
                                   headers=[("Content-Length", "0")])
        assert answer.status == 200, (method, answer)
    assert pn.origin.received[-1][0] == "PATCH"


def test_issue_4_connect_tunnel_to_the_exception(pn, paid):
    response, sock, rest = pn.client.tunnel(f"127.0.0.1:{pn.tcp_origin.port}", authid=paid)
    with sock:
        assert response.status == 200, response
        data = rest
        while b"\n" not in data:
            data += sock.recv(4096)
        assert data == b"hello from the tcp origin\n"
        sock.sendall(b"ping")
        assert sock.recv(4096) == b"echo ping"


@pytest.mark.parametrize("headers,reason", [
    ([], "NO_PAYMENT"),
    ([("X-LTHN-PaymentID", "1A00000000000000")], "NO_PAYMENT"),          # never paid
    ([("X-LTHN-PaymentID", "1A0000")], "BAD_AUTHID"),                    # too short
    ([("X-LTHN-PaymentID", "1A000000000000ZZ")], "BAD_AUTHID"),          # not hex
    ([("X-LTHN-PaymentID", "")], "BAD_AUTHID"),
    ([("X-LTHN-PaymentID", "{authid}"), ("X-LTHN-PaymentID", "1A00000000000001")],
     "BAD_AUTHID"),                                                       # two different
    ([("X-LTHN-PaymentID", "{authid}"), ("X-ITNS-PaymentID", "1A00000000000001")],
     "BAD_AUTHID"),
    # the last of several values is read only when there are several (#16)
    ([("X-LTHN-PaymentID", "{authid}, 1A00000000000001")], "BAD_AUTHID"),
    ([("X-ITNS-PaymentID", "{authid}"), ("X-ITNS-PaymentID", "1A00000000000001")],
     "BAD_AUTHID"),
    ([("X-ITNS-PaymentID", "1A00000000000001, {authid}")], "BAD_AUTHID"),
], ids=["missing", "unpaid", "short", "not-hex", "empty", "two-values", "two-headers",
        "two-in-one-line", "two-legacy-values", "two-legacy-in-one-line"])
def test_issue_4_refused_with_the_right_reason(pn, paid, headers, reason):
    filled = [(k, v.format(authid=paid)) for k, v in headers]
    before = len(pn.origin.received)
    answer = pn.client.request("GET", pn.origin.url("/refused"), headers=filled)
    assert (answer.status, answer.lthn_status) == (403, reason), answer
    assert answer.body.count(b"\n") == 1 and answer.body.startswith(b"Access denied")
    assert len(pn.origin.received) == before
    event = pn.wait_refusal(reason, f"127.0.0.1:{pn.origin.port}")
    assert event.source == "127.0.0.1" and event.kind == "proxy"


@pytest.mark.parametrize("name", ["X-LTHN-PaymentID", "X-ITNS-PaymentID"])
def test_issue_4_a_repeated_header_with_one_value_is_admitted(pn, paid, name):
    for headers in ([(name, paid), (name, paid.lower())], [(name, f"{paid}, {paid}")]):
        answer = pn.client.request("GET", pn.origin.url("/twice"), headers=headers)
        assert answer.status == 200, (headers, answer)


def test_issue_4_non_standard_method_is_bad_method(pn, paid):
    answer = pn.client.request("PROPFIND", pn.origin.url("/x"), authid=paid)
    assert (answer.status, answer.lthn_status) == (403, "BAD_METHOD")


@pytest.mark.parametrize("target,host", [("http://remote.lethean/status", None),
                                         ("http://_remote_/status", None),
                                         ("/status", "remote.lethean")],
                         ids=["remote.lethean", "_remote_", "origin-form"])
def test_issue_4_status_request_answers_the_authids_json(pn, paid, target, host):
    provider = pn.config.provider.id.lower()  # the client sends it in lower case
    answer = pn.client.request("GET", target, headers=[
        ("X-LTHN-PaymentID", paid), ("X-LTHN-PaymentID", paid), ("X-LTHN-MgmtID", provider),
        *([("Host", host)] if host else [])])
    assert (answer.status, answer.lthn_status) == (200, "OK"), answer
    doc = answer.json()
    assert STATUS_KEYS <= set(doc)
    # upstream's formats for upstream's keys (issue #15)
    assert doc["id"] == paid and doc["serviceid"] == "1A" and doc["activated"] == "yes"
    assert answer.header("server") is None
    assert doc["balance_atomic"] > 0 and doc["left"] >= 9 and len(doc["txid"]) == 64


def test_issue_4_status_refusals(pn, paid):
    provider = pn.config.provider.id
    unpaid = new_authid("1A")
    answer = pn.client.request("GET", "http://remote.lethean/status", headers=[
        ("X-LTHN-PaymentID", unpaid), ("X-LTHN-MgmtID", provider.upper())])
    assert (answer.status, answer.lthn_status) == (403, "NO_PAYMENT"), answer
    answer = pn.client.request("GET", "http://remote.lethean/status", headers=[
        ("X-ITNS-PaymentID", paid), ("X-ITNS-MgmtID", "ab" * 32)])
    assert (answer.status, answer.lthn_status) == (503, "BAD_ID"), answer
    answer = pn.client.request("GET", "http://remote.lethean/status", headers=[
        ("X-ITNS-PaymentID", paid), ("X-ITNS-MgmtID", provider)])
    assert (answer.status, answer.lthn_status) == (200, "OK"), answer


def test_issue_4_map_converges_to_the_ledger(pn, paid):
    """Missed bus messages: ledger changes no message announced reach haproxy's map at
    authd's next look at the ledger's changes (every 3 s). An entry removed or added
    behind authd's back (a hand edit of haproxy's map, no ledger change) is corrected by
    the full resync, which authd runs rarely by itself (#16) and at once on SIGHUP."""
    quiet = new_authid("1A")
    ledger = Ledger.open(pn.config.ledger_path)
    try:
        with ledger.transaction() as tx:       # straight into the ledger: no bus message
            tx.ensure_authid(quiet, "1A")
            tx.activate(quiet)
        wait_for(lambda: pn.admitted(quiet), timeout=8, what="a quiet activation admitted")
        with ledger.transaction() as tx:
            tx.deactivate(quiet)
        wait_for(lambda: not pn.admitted(quiet), timeout=8,
                 what="a quiet deactivation refused")
    finally:
        ledger.close()
    admin = HaproxyAdmin(pn.config.haproxy_admin_socket)
    mapfile = authid_map_path(pn.config)
    intruder = new_authid("1A")
    admin.command(f"del map {mapfile} {paid}")
    admin.command(f"add map {mapfile} {intruder} 1A")
    result = pn.node.ctl("signal", "HUP", "authd:*")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: pn.admitted(paid) and not pn.admitted(intruder), timeout=8,
             what="authd's resync restoring the paid authid and removing the unpaid one")


def test_issue_4_haproxy_killed_and_restarted(pn, paid):
    old = pn.node.pid("haproxy")
    unpaid = new_authid("1A")
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: pn.node.pid("haproxy") not in (0, old), timeout=20,
             what="supervisord restarting haproxy")
    wait_for(lambda: pn.admitted(paid), timeout=10, what="paid authid admitted again")
    assert time.monotonic() - started < 20
    answer = pn.client.request("GET", pn.origin.url("/"), authid=unpaid)
    assert (answer.status, answer.lthn_status) == (403, "NO_PAYMENT")


def test_issue_4_two_authd_processes_share_the_work(proxy_node_factory):
    """supervisord numprocs=2: both bind the status and log ports; each refusal is
    published once, paid authids are admitted, status is answered."""
    two = proxy_node_factory(authd_procs=2)
    assert {two.node.status().get(f"authd:authd_{i}") for i in (0, 1)} == {"RUNNING"}
    paid = two.pay_and_wait(timeout=5.0)
    answer = two.client.request("GET", "http://remote.lethean/status", headers=[
        ("X-LTHN-PaymentID", paid), ("X-LTHN-MgmtID", two.config.provider.id)])
    assert (answer.status, answer.json()["id"]) == (200, paid)
    unpaid = [f"1A0000000000AA{n:02X}" for n in range(6)]
    for authid in unpaid:
        answer = two.client.request("GET", two.origin.url(f"/{authid}"), authid=authid)
        assert answer.lthn_status == "NO_PAYMENT"

    def counts() -> list[int]:
        seen = [m.authid for m in two.refusals()]
        return [seen.count(a) for a in unpaid]
    # haproxy's threads send from different ports, so either process may publish any of
    # them, in any order: wait for all, then make sure no second copy follows
    wait_for(lambda: min(counts()) >= 1, timeout=5, what="every refusal on the bus")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert counts() == [1] * len(unpaid)
        time.sleep(0.05)  # polling interval for the 1 s window above
