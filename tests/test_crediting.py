"""paymentd's crediting rules on a real ledger in tmp_path, fed hand-built Transfers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lthn import config as config_mod
from lthn.ledger import Ledger
from services.paymentd.crediting import SCAN_HEIGHT_KEY, Crediting, merge
from services.paymentd.wallet_rpc import Transfer

COST = "0.001"                       # coins per minute
PER_MINUTE = 10**9                   # the same in atomic units (monero: 10^12 per coin)
TEN_MINUTES = 10 * PER_MINUTE
A = "1a00112233445566"               # as the wallet lists it: lower case
A_UP = A.upper()


def make_config(tmp_path: Path, **service: object) -> config_mod.Config:
    svc = {"id": "1A", "name": "proxy", "type": "proxy", "cost": COST, **service}
    return config_mod.parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path),
                             "wallet": {"dialect": "monero", "start_height": 50},
                             "services": [svc]}, "test.yaml")


def tx_id(n: int) -> str:
    return f"{n:064x}"


def pool(n: int, payment_id: str = A, amount: int = TEN_MINUTES,
         double_spend: bool = False) -> Transfer:
    return Transfer(txid=tx_id(n), payment_id=payment_id, amount=amount, height=0,
                    confirmations=0, in_pool=True, double_spend_seen=double_spend)


def mined(n: int, confirmations: int, payment_id: str = A, amount: int = TEN_MINUTES,
          height: int = 100) -> Transfer:
    return Transfer(txid=tx_id(n), payment_id=payment_id, amount=amount, height=height,
                    confirmations=confirmations, in_pool=False, double_spend_seen=False)


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger.open(tmp_path / "ledger.sqlite")
    try:
        yield led
    finally:
        led.close()


def poll(ledger: Ledger, crediting: Crediting, transfers: list[Transfer], height: int = 101,
         vanished: tuple[str, ...] = ()):
    with ledger.transaction() as tx:
        return crediting.apply(tx, transfers, height, vanished)


def outbox(ledger: Ledger) -> list[tuple[str, dict]]:
    return [(m.topic, m.fields()) for m in ledger.take_outbox()]


def test_a_payment_is_credited_once_however_often_it_is_listed(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path))
    for _ in range(3):
        poll(ledger, crediting, [pool(1)])
    row = ledger.authid(A_UP)
    assert row is not None and (row.credit, row.pending, row.payments) == (TEN_MINUTES, 0, 1)
    assert row.state == "ACTIVE"
    topics = [t for t, _ in outbox(ledger)]
    assert topics == ["payment.credited", "authid.activated"]
    assert [e for _, e, _, _ in ledger.audit_lines(A_UP)] == ["credited", "activated"]


def test_one_poll_is_all_or_nothing(tmp_path, ledger):
    """A failure inside the transaction leaves no credit, no audit line, no message."""
    crediting = Crediting(make_config(tmp_path))
    with pytest.raises(RuntimeError), ledger.transaction() as tx:
        crediting.apply(tx, [pool(1)], 101)
        raise RuntimeError("crash before commit")
    assert ledger.authid(A_UP) is None
    assert ledger.meta(SCAN_HEIGHT_KEY) is None
    assert outbox(ledger) == []


def test_confirmations_rise_and_are_published(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path))
    poll(ledger, crediting, [pool(1)])
    poll(ledger, crediting, [mined(1, 1)], height=101)
    poll(ledger, crediting, [mined(1, 2)], height=102)
    poll(ledger, crediting, [mined(1, 2)], height=102)
    confirmed = [d for t, d in outbox(ledger) if t == "payment.confirmed"]
    assert [(d["confirmations"], d["height"]) for d in confirmed] == [(1, 100), (2, 100)]
    (payment,) = ledger.payments_of(A_UP)
    assert (payment.state, payment.confirmations) == ("in", 2)


def test_first_payment_waits_for_its_confirmations(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=2))
    poll(ledger, crediting, [pool(1)])
    row = ledger.authid(A_UP)
    assert row is not None and (row.credit, row.pending, row.state) == (0, TEN_MINUTES,
                                                                        "PENDING")
    poll(ledger, crediting, [mined(1, 1)])
    assert ledger.authid(A_UP).state == "PENDING"
    poll(ledger, crediting, [mined(1, 2)])
    row = ledger.authid(A_UP)
    assert (row.credit, row.pending, row.state) == (TEN_MINUTES, 0, "ACTIVE")
    assert "spendable" in [e for _, e, _, _ in ledger.audit_lines(A_UP)]


def test_later_payments_follow_the_subsequent_rules(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=0,
                                      subsequentVerificationsNeeded=3))
    poll(ledger, crediting, [pool(1)])
    poll(ledger, crediting, [pool(2, amount=5)])
    first, second = sorted(ledger.payments_of(A_UP), key=lambda p: p.ordinal)
    assert (first.ordinal, first.spendable) == (1, True)
    assert (second.ordinal, second.spendable) == (2, False)
    poll(ledger, crediting, [mined(2, 3, amount=5)])
    assert ledger.authid(A_UP).credit == TEN_MINUTES + 5


def test_too_little_for_the_prepaid_minutes_does_not_activate(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path))
    poll(ledger, crediting, [pool(1, amount=TEN_MINUTES - 1)])
    assert ledger.authid(A_UP).state == "PENDING"
    poll(ledger, crediting, [pool(1, amount=TEN_MINUTES - 1), pool(2, amount=1)])
    assert ledger.authid(A_UP).state == "ACTIVE"


@pytest.mark.parametrize("payment_id, amount, reason", [
    ("1b00112233445566", TEN_MINUTES, "unknown service 1B"),
    ("0000000000000000", TEN_MINUTES, "unknown service 00"),
    ("1a0011223344556", TEN_MINUTES, "payment id is not 16 hex characters"),
    ("1a00112233445566" * 4, TEN_MINUTES, "payment id is not 16 hex characters"),
    ("", TEN_MINUTES, "payment id is not 16 hex characters"),
    ("1a0011223344556z", TEN_MINUTES, "payment id is not 16 hex characters"),
    (A, 0, "amount is 0"),
])
def test_bad_transfers_are_rejected_once_with_the_reason(tmp_path, ledger, payment_id,
                                                         amount, reason):
    crediting = Crediting(make_config(tmp_path))
    t = pool(7, payment_id=payment_id, amount=amount)
    poll(ledger, crediting, [t])
    poll(ledger, crediting, [t])
    assert ledger.rejected() == [(t.txid, payment_id, amount, reason)]
    assert outbox(ledger) == [("payment.rejected", {"txid": t.txid, "payment_id": payment_id,
                                                    "amount": amount, "reason": reason})]
    assert [(e, d["reason"]) for _, e, _, d in ledger.audit_lines()] == [("rejected", reason)]
    assert ledger.authid(A_UP) is None and ledger.authid(payment_id.upper()) is None


def test_funds_locked_by_unlock_time_are_rejected(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path))
    locked = Transfer(tx_id(3), A, TEN_MINUTES, 0, 0, True, False, unlock_time=10**9)
    poll(ledger, crediting, [locked])
    assert ledger.rejected() == [(tx_id(3), A, TEN_MINUTES,
                                  "funds locked by unlock_time 1000000000")]
    assert ledger.authid(A_UP) is None


def test_a_pool_payment_that_vanishes_unspendable_is_revoked(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=1))
    poll(ledger, crediting, [pool(1)])
    outbox(ledger)
    out = poll(ledger, crediting, [], vanished=(tx_id(1),))
    assert out.revoked == 1
    row = ledger.authid(A_UP)
    assert (row.credit, row.pending, row.payments) == (0, 0, 0)
    assert outbox(ledger) == [("payment.revoked", {"authid": A_UP, "txid": tx_id(1),
                                                   "amount": TEN_MINUTES,
                                                   "reason": "left the pool unmined"})]
    # revoked is final for that poll; a later identical poll changes nothing
    poll(ledger, crediting, [], vanished=(tx_id(1),))
    assert outbox(ledger) == []


def test_a_spendable_payment_that_vanishes_keeps_its_credit(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path))  # 0 confirmations needed
    poll(ledger, crediting, [pool(1)])
    outbox(ledger)
    out = poll(ledger, crediting, [], vanished=(tx_id(1),))
    assert out.revoked == 0
    assert ledger.authid(A_UP).credit == TEN_MINUTES
    assert [p.state for p in ledger.payments_of(A_UP)] == ["vanished"]
    assert "vanished" in [e for _, e, _, _ in ledger.audit_lines(A_UP)]


def test_double_spend_seen_revokes_unless_spendable(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=1))
    poll(ledger, crediting, [pool(1)])
    poll(ledger, crediting, [pool(1, double_spend=True)])
    assert [p.state for p in ledger.payments_of(A_UP)] == ["revoked"]
    assert ledger.authid(A_UP).pending == 0


def test_double_spend_seen_in_the_pool_is_never_spendable(tmp_path, ledger):
    """Even with 0 confirmations needed, a pool tx flagged double-spent is not credited."""
    crediting = Crediting(make_config(tmp_path))
    poll(ledger, crediting, [pool(1, double_spend=True)])
    row = ledger.authid(A_UP)
    assert (row.credit, row.pending, row.state) == (0, 0, "PENDING")
    assert [t for t, _ in outbox(ledger)] == ["payment.credited", "payment.revoked"]


def test_a_revoked_payment_mined_after_all_is_reinstated(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=1))
    poll(ledger, crediting, [pool(1)])
    poll(ledger, crediting, [], vanished=(tx_id(1),))
    poll(ledger, crediting, [mined(1, 1)])
    row = ledger.authid(A_UP)
    assert (row.credit, row.pending, row.state) == (TEN_MINUTES, 0, "ACTIVE")
    assert [p.state for p in ledger.payments_of(A_UP)] == ["in"]


def test_scan_height_is_stored_with_the_poll_and_never_goes_back(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path))
    assert crediting.scan_height(ledger) == 49  # start_height 50: blocks from 50 on
    assert crediting.query_height(ledger) == 49
    poll(ledger, crediting, [], height=120)
    assert crediting.scan_height(ledger) == 119
    assert crediting.query_height(ledger) == 119 - 10
    poll(ledger, crediting, [], height=90)
    assert crediting.scan_height(ledger) == 119


def test_query_height_reaches_back_to_watched_payments(tmp_path, ledger):
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=15))
    poll(ledger, crediting, [mined(1, 1, height=60)], height=61)
    poll(ledger, crediting, [mined(1, 14, height=60)], height=200)
    assert crediting.query_height(ledger) == 59
    assert crediting.missing(ledger, []) == [tx_id(1)]
    assert crediting.missing(ledger, [mined(1, 15, height=60)]) == []
    poll(ledger, crediting, [mined(1, 15, height=60)], height=200)
    assert crediting.query_height(ledger) == 199 - 10


def test_merge_adds_subaddress_parts_and_prefers_mined(tmp_path):
    parts = [Transfer(tx_id(1), A, 5, 100, 1, False, False, (0, 1)),
             Transfer(tx_id(1), A, 7, 100, 1, False, False, (0, 2)),
             Transfer(tx_id(1), A, 7, 100, 1, False, False, (0, 2)),
             Transfer(tx_id(1), A, 12, 0, 0, True, False, (0, 1))]
    (merged,) = merge(parts).values()
    assert (merged.amount, merged.in_pool) == (12, False)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls=st.lists(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)),
                               max_size=6), min_size=1, max_size=8))
def test_credit_equals_each_distinct_payment_once(tmp_path_factory, polls):
    """Any sequence of polls listing payments at any confirmations credits each txid once."""
    path = tmp_path_factory.mktemp("h")
    led = Ledger.open(path / "ledger.sqlite")
    try:
        crediting = Crediting(make_config(path))
        seen: set[int] = set()
        for listing in polls:
            transfers = [pool(n, amount=n) if c == 0 else mined(n, c, amount=n)
                         for n, c in listing]
            poll(led, crediting, transfers)
            seen |= {n for n, _ in listing}
        row = led.authid(A_UP)
        total = sum(seen)
        assert (row.credit + row.pending if row else 0) == total
        assert len(led.payments_of(A_UP)) == len(seen)
        credited = [e for _, e, _, _ in led.audit_lines(A_UP) if e == "credited"]
        assert len(credited) == len(seen)
    finally:
        led.close()


def test_double_spend_flag_on_a_mined_transfer_does_not_revoke(tmp_path, ledger):
    """Once in a block the double spend lost; only a pool flag counts."""
    crediting = Crediting(make_config(tmp_path, firstVerificationsNeeded=3))
    flagged = Transfer(tx_id(1), A, TEN_MINUTES, 100, 1, False, True)
    poll(ledger, crediting, [flagged])
    assert [p.state for p in ledger.payments_of(A_UP)] == ["in"]
    assert ledger.authid(A_UP).pending == TEN_MINUTES


def test_a_service_removed_from_the_config_does_not_turn_credits_into_rejections(
        tmp_path, ledger):
    poll(ledger, Crediting(make_config(tmp_path)), [pool(1)])
    other = config_mod.parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path),
                              "services": [{"id": "2B", "name": "x", "type": "proxy",
                                            "cost": COST}]}, "test.yaml")
    poll(ledger, Crediting(other), [mined(1, 1)])
    assert ledger.rejected() == []
    assert ledger.authid(A_UP).credit == TEN_MINUTES
