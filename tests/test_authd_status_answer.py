"""authd's answer to the client status request, from a real ledger, over real HTTP."""

from __future__ import annotations

import http.client
import time
from email.message import Message

import pytest

from lthn import access
from lthn.config import parse
from lthn.ledger import Ledger
from lthn.refusals import Refusal
from services.authd.status_answer import StatusAnswerer, answer, authid_from
from tests.fixtures.common import free_port, wait_for

PROVIDER = "ab" * 32
ACTIVE = "1A00112233445566"
PENDING = "1A00000000000077"
KEYS = {"id", "serviceid", "created", "modified", "activated", "spending", "balance",
        "overall", "left", "confirmations", "charged_cnt", "discharged_cnt", "txid",
        "txid_history"}


@pytest.fixture
def cfg(tmp_path):
    return parse({"provider": {"id": PROVIDER}, "state_dir": str(tmp_path),
                  "wallet": {"dialect": "monero"},
                  "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001",
                                "firstPrePaidMinutes": 10}],
                  "proxy": {"status_port": free_port()}}, "test.yaml")


@pytest.fixture
def ledger(cfg):
    led = Ledger.open(cfg.ledger_path)
    rules = access.rules_for(cfg, cfg.services[0])
    with led.transaction() as tx:
        for authid, amount, txid in ((ACTIVE, 12 * 10**9, "aa" * 32), (PENDING, 10**9, "bb" * 32)):
            tx.ensure_authid(authid, "1A")
            tx.insert_payment(txid, authid, amount, 10, 2, "mined", True, 1)
            access.reevaluate(tx, tx.credit(authid, amount, payment=True), rules, "test")
    yield led
    led.close()


def headers(*pairs: tuple[str, str]) -> Message:
    msg = Message()
    for name, value in pairs:
        msg[name] = value
    return msg


def test_active_authid_gets_200_and_lethean_keys_with_exact_integers(cfg, ledger):
    result = answer(cfg, ledger, headers(("X-LTHN-PaymentID", ACTIVE.lower()),
                                         ("X-LTHN-PaymentID", ACTIVE),
                                         ("X-LTHN-MgmtID", PROVIDER.lower())))
    assert (result.status, result.reason, result.content_type) == (200, "OK", "application/json")
    import json
    doc = json.loads(result.body)
    assert KEYS <= set(doc)
    assert (doc["id"], doc["serviceid"]) == (ACTIVE, "1A")
    assert doc["balance_atomic"] == 12 * 10**9 and doc["balance"] == 0.012
    assert (doc["minutes_bought"], doc["minutes_left"]) == (12, 12)  # 10^9 atomic a minute
    assert (doc["txid"], doc["txids"], doc["confirmations"]) == ("aa" * 32, ["aa" * 32], 2)


def test_upstream_keys_have_upstream_formats(cfg, ledger):
    """Lethean's AuthId.getInfo() (lib/authids.py): dates as util.timefmt's local
    "%Y-%m-%dT%H:%M:%S", yes/no flags, minutes spent, comma-joined txids (issue #15)."""
    import json
    with ledger.transaction() as tx:
        tx.insert_payment("cc" * 32, ACTIVE, 10**9, 11, 1, "mined", True, 2)
        tx.credit(ACTIVE, 10**9, payment=True)
        tx.start_spending(ACTIVE, time.time() - 200)
        tx.spend(ACTIVE, 3 * 10**9, 180_500)
    result = answer(cfg, ledger, headers(("X-LTHN-PaymentID", ACTIVE),
                                         ("X-LTHN-MgmtID", PROVIDER)))
    doc = json.loads(result.body)
    row = ledger.authid(ACTIVE)
    assert doc["created"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(row.created))
    assert doc["modified"] == time.strftime("%Y-%m-%dT%H:%M:%S",
                                            time.localtime(row.modified))
    assert (doc["activated"], doc["spending"]) == ("yes", "yes")
    assert doc["overall"] == 3                       # minutes spent (180.5 s charged)
    assert doc["left"] == 10.0                       # minutes the balance still buys
    assert doc["balance"] == 0.01
    assert doc["txid_history"] == f"{'aa' * 32},{'cc' * 32}"
    assert doc["txid"] == "cc" * 32 and doc["charged_cnt"] == 2
    # what is exact lives under new keys
    assert doc["created_at"] == row.created and doc["spent_atomic"] == 3 * 10**9


@pytest.mark.parametrize("pairs,status,reason", [
    ([("X-LTHN-PaymentID", PENDING), ("X-LTHN-MgmtID", PROVIDER)], 403, "NO_PAYMENT"),
    ([("X-LTHN-PaymentID", "1A0000000000FFFF"), ("X-LTHN-MgmtID", PROVIDER)], 403, "NO_PAYMENT"),
    ([("X-LTHN-MgmtID", PROVIDER)], 403, "NO_PAYMENT"),
    ([("X-LTHN-PaymentID", ACTIVE), ("X-LTHN-PaymentID", PENDING),
      ("X-LTHN-MgmtID", PROVIDER)], 403, "NO_PAYMENT"),
    ([("X-LTHN-PaymentID", "xyz"), ("X-LTHN-MgmtID", PROVIDER)], 403, "NO_PAYMENT"),
    ([("X-LTHN-PaymentID", ACTIVE), ("X-LTHN-MgmtID", "cd" * 32)], 503, "BAD_ID"),
    ([("X-LTHN-PaymentID", ACTIVE)], 503, "BAD_ID"),
    ([("X-ITNS-PaymentID", ACTIVE), ("X-ITNS-MgmtID", PROVIDER.upper())], 200, "OK"),
], ids=["pending", "unknown", "no-header", "two-authids", "malformed", "wrong-provider",
        "no-provider", "legacy-upper"])
def test_refusals_and_legacy_headers(cfg, ledger, pairs, status, reason):
    result = answer(cfg, ledger, headers(*pairs))
    assert (result.status, result.reason) == (status, reason)
    refusal = Refusal.of(reason)
    assert reason == "OK" or (refusal is not None and result.body == refusal.body)


def test_authid_from_header_values():
    assert authid_from([ACTIVE.lower(), ACTIVE]) == ACTIVE
    assert authid_from([f"{ACTIVE}, {ACTIVE.lower()}"]) == ACTIVE
    assert authid_from([ACTIVE, PENDING]) is None
    assert authid_from([]) is None and authid_from([""]) is None


def test_answerer_answers_at_once_over_http(cfg, ledger):
    server = StatusAnswerer(cfg)
    server.start()
    try:
        def ask(mgmt: str) -> http.client.HTTPResponse:
            conn = http.client.HTTPConnection("127.0.0.1", cfg.proxy.status_port, timeout=5)
            conn.request("GET", "http://remote.lethean/status", headers={
                "X-LTHN-PaymentID": ACTIVE, "X-LTHN-MgmtID": mgmt})
            response = conn.getresponse()
            response.read()
            conn.close()
            return response
        wait_for(lambda: ask(PROVIDER), timeout=5, what="status answerer listening")
        started = time.monotonic()
        for _ in range(20):
            response = ask(PROVIDER)
            assert (response.status, response.getheader("X-LTHN-Status")) == (200, "OK")
        assert time.monotonic() - started < 2.0   # the original slept 1 s per request
        # a client must not learn what the node runs (issue #15)
        assert response.getheader("Server") is None and response.getheader("Date")
        response = ask("cd" * 32)
        assert (response.status, response.reason) == (503, "BAD_ID")
        assert response.getheader("X-LTHN-Status") == "BAD_ID"
    finally:
        server.stop()


def test_two_answerers_share_the_port(cfg, ledger):
    """supervisord numprocs > 1: every authd binds the same status port (SO_REUSEPORT) and
    the kernel spreads connections over them, so both answer; one left alone answers all."""
    answerers = [StatusAnswerer(cfg), StatusAnswerer(cfg)]   # without SO_REUSEPORT: EADDRINUSE
    served: dict[int, int] = {}
    for number, answerer in enumerate(answerers):
        def counting(request, address, _finish=answerer.server.finish_request, _n=number):
            served[_n] = served.get(_n, 0) + 1
            _finish(request, address)
        answerer.server.finish_request = counting   # which server took the connection
        answerer.start()
    try:
        def ask() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", cfg.proxy.status_port, timeout=5)
            try:
                conn.request("GET", "http://remote.lethean/status", headers={
                    "X-LTHN-PaymentID": ACTIVE, "X-LTHN-MgmtID": PROVIDER})
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()
        # each new connection has a new source port, hashed to one of the two sockets
        wait_for(lambda: ask() == 200 and len(served) == 2, timeout=10,
                 what="both answerers answering on the shared port")
        answerers[0].stop()
        before = served[1]
        assert [ask() for _ in range(5)] == [200] * 5
        assert served[1] == before + 5              # the one left answers every request
    finally:
        for answerer in answerers:
            answerer.stop()
