"""Issue #14: after a wallet outage the backoff had grown to 30 s, and payments waited
20 s after the wallet answered again. A returning wallet is noticed within a couple of
seconds, however long it was away.

Real busd and paymentd processes; the fake wallet, because a test must make the wallet
fail for a while and count the tries (tests/fixtures/fake_wallet.py).
"""

from __future__ import annotations

import time

from tests.fixtures.common import wait_for
from tests.fixtures.fake_wallet import fake_entry
from tests.fixtures.payment_node import AMOUNT
from tests.fixtures.regtest import new_authid

# paymentd's tries while the wallet is down, at the default poll interval 0.1 s: 0, 0.1,
# 0.3, 0.7, 1.5, then every 1.5 s. A backoff doubling to 30 s would have waited 6.4 s
# after the seventh failed try.
FAILED_TRIES = 7


def test_issue_14_wallet_back_after_a_long_outage_is_seen_within_two_seconds(
        fake, node_factory):
    node = node_factory({"dialect": "monero", "url": fake.url, "timeout": 1.0})
    node.start_paymentd()
    node.wait_message(lambda e: e.topic == "wallet.state" and e.message.up,
                      what="wallet.state up")
    with fake.lock:
        fake.mode = "http500"
    down = node.wait_message(lambda e: e.topic == "wallet.state" and not e.message.up,
                             what="wallet.state down")
    # every try starts with a refresh (a retry reads everything it missed)
    tries = fake.calls_of("refresh")
    wait_for(lambda: fake.calls_of("refresh") >= tries + FAILED_TRIES, timeout=20,
             what=f"{FAILED_TRIES} failed tries")
    authid, txid = new_authid("1A"), "8d" * 32
    with fake.lock:   # the wallet answers again, with a payment made meanwhile
        fake.pool = [fake_entry(txid, authid.lower(), AMOUNT)]
        fake.mode = "ok"
    back = time.monotonic()
    node.wait_message(lambda e: e.topic == "wallet.state" and e.message.up
                      and e.seq > down.seq, timeout=20, what="wallet.state up again")
    node.wait_message(lambda e: e.topic == "payment.credited" and e.message.txid == txid,
                      timeout=20, what="the payment made meanwhile credited")
    took = time.monotonic() - back
    assert took < 2.5, f"the wallet was seen back after {took:.1f} s"
    assert "up again at height" in node.log_text()
