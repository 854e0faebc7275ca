"""Changes by hand (issue #19): grant, revoke, topup and spend on a real ledger, each with
its audit line naming who and why, its bus messages, and the credit rules kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from lthn import by_hand
from lthn.config import parse
from lthn.control import Asked, Refused
from lthn.ledger import Ledger
from lthn.requests import Grant, Revoke, Spend, Topup

AUTHID = "1A00112233445566"
ASKED = Asked(sender="lthnctl.1", user="alice")
# 0.001 coin a minute = 10**9 atomic units (monero units); 10 prepaid minutes
CONFIG = parse({"provider": {"id": "a" * 64}, "state_dir": "/tmp/x",
                "wallet": {"dialect": "monero"},
                "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"}]},
               "test.yaml")
MINUTE = 10**9


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger.open(tmp_path / "ledger.sqlite")
    yield led
    led.close()


def topics(ledger: Ledger) -> list[str]:
    return [m.topic for m in ledger.take_outbox()]


def audit(ledger: Ledger) -> list[tuple[str, str, dict]]:
    return [(actor, event, detail) for actor, event, _, detail in ledger.audit_lines(AUTHID)]


def test_grant_admits_with_the_first_prepaid_minutes_by_default(ledger):
    done = by_hand.grant(ledger, CONFIG, Grant(authid=AUTHID.lower(), amount=0,
                                               reason="ticket 7"), ASKED)
    assert (done.state, done.balance, done.changed) == ("ACTIVE", 10 * MINUTE, True)
    assert topics(ledger) == ["authid.activated"]
    assert audit(ledger) == [
        ("lthnctl:alice", "granted", {"amount": 10 * MINUTE, "reason": "ticket 7"}),
        ("lthnctl:alice", "activated", {"balance": 10 * MINUTE, "reason": "ticket 7"})]


def test_a_revoked_authid_stays_refused_whatever_it_is_paid_until_granted(ledger):
    by_hand.grant(ledger, CONFIG, Grant(authid=AUTHID, amount=MINUTE, reason="try"), ASKED)
    ledger.take_outbox()
    done = by_hand.revoke(ledger, CONFIG, Revoke(authid=AUTHID, reason="abuse"), ASKED)
    assert (done.state, done.balance) == ("REVOKED", MINUTE)   # credit kept
    assert [m.topic for m in ledger.take_outbox()] == ["authid.deactivated"]
    again = by_hand.revoke(ledger, CONFIG, Revoke(authid=AUTHID, reason="abuse"), ASKED)
    assert again.changed is False and topics(ledger) == []
    # a top-up worth far more than the first prepaid minutes does not re-admit it
    done = by_hand.topup(ledger, CONFIG, Topup(authid=AUTHID, amount=100 * MINUTE,
                                               reason="paid by bank"), ASKED)
    assert done.state == "REVOKED" and done.balance == 101 * MINUTE
    assert topics(ledger) == []
    done = by_hand.grant(ledger, CONFIG, Grant(authid=AUTHID, amount=MINUTE,
                                               reason="sorted out"), ASKED)
    assert done.state == "ACTIVE" and topics(ledger) == ["authid.activated"]


def test_a_topup_activates_by_the_rules_like_a_payment(ledger):
    small = by_hand.topup(ledger, CONFIG, Topup(authid=AUTHID, amount=MINUTE, reason="a"),
                          ASKED)
    assert small.state == "PENDING" and topics(ledger) == []
    enough = by_hand.topup(ledger, CONFIG, Topup(authid=AUTHID, amount=9 * MINUTE,
                                                 reason="b"), ASKED)
    assert enough.state == "ACTIVE" and topics(ledger) == ["authid.activated"]


def test_spend_takes_at_most_the_balance_and_keeps_spends_equal_to_spent(ledger):
    by_hand.grant(ledger, CONFIG, Grant(authid=AUTHID, amount=3 * MINUTE, reason="g"), ASKED)
    ledger.take_outbox()
    with pytest.raises(Refused, match="the balance is 3000000000 atomic units, less than"):
        by_hand.spend(ledger, CONFIG, Spend(authid=AUTHID, amount=4 * MINUTE, reason="x"),
                      ASKED)
    done = by_hand.spend(ledger, CONFIG, Spend(authid=AUTHID, amount=MINUTE, reason="refund "
                                               "reversed"), ASKED)
    assert done.balance == 2 * MINUTE and done.state == "ACTIVE"
    done = by_hand.spend(ledger, CONFIG, Spend(authid=AUTHID, amount=2 * MINUTE,
                                               reason="all"), ASKED)
    # nothing left to pay the next second: deactivated in the same transaction
    assert (done.balance, done.state) == (0, "DEPLETED")
    assert topics(ledger) == ["authid.charged", "authid.charged", "authid.deactivated"]
    with ledger.transaction() as tx:
        assert tx.spends_total(AUTHID) == ledger.authid(AUTHID).spent == 3 * MINUTE
    assert [e for _, e, _ in audit(ledger)].count("spent by hand") == 2


@pytest.mark.parametrize("call, words", [
    (lambda led: by_hand.grant(led, CONFIG, Grant(authid="2B00112233445566", amount=0,
                                                  reason="x"), ASKED),
     "service 2B is not in the config"),
    (lambda led: by_hand.topup(led, CONFIG, Topup(authid="xyz", amount=1, reason="x"),
                               ASKED), "is not 16 hex characters"),
    (lambda led: by_hand.topup(led, CONFIG, Topup(authid=AUTHID, amount=0, reason="x"),
                               ASKED), "more than 0"),
    (lambda led: by_hand.spend(led, CONFIG, Spend(authid=AUTHID, amount=1, reason="x"),
                               ASKED), "not in the ledger"),
    (lambda led: by_hand.revoke(led, CONFIG, Revoke(authid=AUTHID, reason="x"), ASKED),
     "not in the ledger"),
])
def test_mistakes_are_refused_with_one_line_and_change_nothing(ledger, call, words):
    with pytest.raises(Refused, match=words):
        call(ledger)
    assert ledger.list_authids() == [] and ledger.audit_lines() == []
