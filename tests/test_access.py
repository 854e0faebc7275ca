"""lthn.access: the one place where credit and access change, on a real ledger file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lthn import access
from lthn.credit_rules import Rules
from lthn.ledger import Ledger

RULES = Rules(cost=600, first_minutes=10, first_confirmations=0, next_minutes=5,
              next_confirmations=1)
AUTHID = "1A00112233445566"


class HandClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger.open(tmp_path / "ledger.sqlite", clock=HandClock())
    yield led
    led.close()


def credit(ledger: Ledger, amount: int):
    with ledger.transaction() as tx:
        tx.ensure_authid(AUTHID, "1A")
        return access.reevaluate(tx, tx.credit(AUTHID, amount), RULES, "test")


def topics(ledger: Ledger) -> list[str]:
    return [m.topic for m in ledger.take_outbox()]


def test_first_payment_below_prepaid_minutes_stays_pending(ledger):
    row = credit(ledger, 10 * 600 - 1)
    assert row.state == "PENDING"
    assert topics(ledger) == []


def test_first_payment_buying_the_prepaid_minutes_activates_once(ledger):
    row = credit(ledger, 10 * 600)
    assert (row.state, row.activations) == ("ACTIVE", 1)
    assert topics(ledger) == ["authid.activated"]
    row = credit(ledger, 1)  # a top-up while active changes nothing about access
    assert row.state == "ACTIVE"
    assert topics(ledger) == []


def test_charging_to_exhaustion_deactivates_and_never_overdraws(ledger):
    credit(ledger, 6000)
    ledger.take_outbox()
    with ledger.transaction() as tx:
        row = tx.authid(AUTHID)
        charged = access.charge(tx, row, RULES, 11 * 60_000, "time", "test")
        assert charged.row == tx.authid(AUTHID)
        row = access.reevaluate(tx, charged.row, RULES, "test")
    assert charged.amount == 6000  # 11 minutes cost 6600, but only 6000 was there
    assert (row.state, row.balance) == ("DEPLETED", 0)
    assert topics(ledger) == ["authid.charged", "authid.deactivated"]


def test_reactivation_needs_the_subsequent_prepaid_minutes(ledger):
    credit(ledger, 6000)
    with ledger.transaction() as tx:
        access.charge(tx, tx.authid(AUTHID), RULES, 10 * 60_000, "time", "test")
        access.reevaluate(tx, tx.authid(AUTHID), RULES, "test")
    assert credit(ledger, 5 * 600 - 1).state == "DEPLETED"
    row = credit(ledger, 1)
    assert (row.state, row.activations) == ("ACTIVE", 2)


def test_charges_are_recorded_per_minute_of_use_not_per_tick(ledger):
    credit(ledger, 6000)
    ledger.take_outbox()
    for _ in range(3):  # 3 x 30 s: the first minute completes on the second tick
        with ledger.transaction() as tx:
            access.charge(tx, tx.authid(AUTHID), RULES, 30_000, "time", "test")
    events = [(e, d) for _, e, _, d in ledger.audit_lines(AUTHID)]
    assert events == [("activated", {"balance": 6000}),
                      ("charged", {"amount": 600, "ms": 60_000, "minute": 0, "reason": "time"})]
    assert topics(ledger) == ["authid.charged"]
    with ledger.transaction() as tx:
        assert tx.spends_total(AUTHID) == ledger.authid(AUTHID).spent == 900
    rows = ledger.conn.execute("SELECT period, amount, ms FROM spends").fetchall()
    assert rows == [(0, 600, 60_000), (1, 300, 30_000)]


def test_a_failed_transaction_leaves_no_trace(ledger):
    with pytest.raises(RuntimeError), ledger.transaction() as tx:
        tx.ensure_authid(AUTHID, "1A")
        access.reevaluate(tx, tx.credit(AUTHID, 6000), RULES, "test")
        raise RuntimeError("crash before commit")
    assert ledger.authid(AUTHID) is None
    assert topics(ledger) == []


def test_charge_many_writes_what_charging_one_by_one_writes(tmp_path: Path):
    """A tick charges its authids with charge_many (#16): the ledger must end up as if
    each had been charged on its own, spends, audit lines and messages included; one runs
    dry, one finishes a minute of use, one is mid-minute, one is charged nothing."""
    authids = [f"1A{i:014X}" for i in range(4)]
    ledgers = [Ledger.open(tmp_path / f"{n}.sqlite", clock=HandClock()) for n in ("a", "b")]
    for led in ledgers:
        with led.transaction() as tx:
            for authid, amount in zip(authids, (6000, 700, 100_000, 6000), strict=True):
                tx.ensure_authid(authid, "1A")
                tx.credit(authid, amount)
                tx.activate(authid)
            tx.spend(authids[2], 0, 50_000)   # 50 s into its first minute
        led.take_outbox()
    plans = [(authids[0], 30_000), (authids[1], 90_000), (authids[2], 20_000),
             (authids[3], 0)]
    with ledgers[0].transaction() as tx:
        one = [access.charge(tx, tx.authid(a), RULES, ms, "time", "test") for a, ms in plans]
    with ledgers[1].transaction() as tx:
        many = access.charge_many(tx, [access.Use(tx.authid(a), RULES, ms, "time")
                                       for a, ms in plans], "test")
    assert many == one
    assert [c.amount for c in many] == [300, 700, 200, 0]
    a, b = ledgers
    assert a.audit_lines() == b.audit_lines()
    assert [(m.topic, m.fields()) for m in a.take_outbox()] == \
        [(m.topic, m.fields()) for m in b.take_outbox()]
    for authid in authids:
        assert a.authid(authid) == b.authid(authid)
        with a.transaction() as ta, b.transaction() as tb:
            assert ta.spends_total(authid) == tb.spends_total(authid)
    for led in ledgers:
        led.close()
