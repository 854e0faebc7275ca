"""Issue #16: paymentd sees a pool payment within a short interval without refreshing the
wallet, and follows new blocks as monerod publishes them (ZMQ chain_main), falling back to
timed refreshes when the publisher is not there.

Real busd and paymentd processes (tests/fixtures/payment_node.py); the real regtest chain
with monerod's ZMQ publisher for blocks; the fake wallet where a test must count the
wallet calls paymentd makes or script a chain without a daemon.
"""

from __future__ import annotations

import time

import zmq

from tests.fixtures.common import free_port, wait_for
from tests.fixtures.fake_wallet import fake_entry
from tests.fixtures.payment_node import AMOUNT
from tests.fixtures.regtest import new_authid

SLOW_REFRESH = 60.0   # a timed refresh this rare cannot explain what a test sees


def test_issue_16_pool_payment_credited_from_the_pool_listing_alone(fake, node_factory):
    """A pool payment is credited within a second, from pool listings only: no refresh."""
    node = node_factory({"dialect": "monero", "url": fake.url, "timeout": 1.0,
                         "refresh_interval": SLOW_REFRESH})
    node.start_paymentd()
    wait_for(lambda: fake.calls_of("get_transfers") >= 3, what="pool listings")
    refreshes, listings = fake.calls_of("refresh"), fake.calls_of("get_transfers")
    authid, txid = new_authid("1A"), "5a" * 32
    started = time.monotonic()
    with fake.lock:
        fake.pool = [fake_entry(txid, authid.lower(), AMOUNT)]
    credit = node.wait_message(lambda e: e.topic == "payment.credited"
                               and e.message.txid == txid, what="payment.credited").message
    took = time.monotonic() - started
    assert (credit.authid, credit.confirmations) == (authid, 0)
    assert took < 1.0, f"credited {took:.2f} s after it entered the pool"
    assert fake.calls_of("refresh") == refreshes, "a pool payment needs no refresh"
    # listed by deadline every 0.1 s (the default), not once a second
    time.sleep(1.0)   # a span to count calls over, not a wait for a condition
    per_second = (fake.calls_of("get_transfers") - listings) / (time.monotonic() - started)
    assert 5 <= per_second <= 12, per_second


def test_issue_16_confirmations_follow_blocks_through_daemon_zmq(regtest, node_factory):
    """With wallet.daemon_zmq set, a new block brings its confirmation at once, not at the
    next timed refresh (set to a minute here)."""
    wallet = dict(regtest.wallet_section(), start_height=regtest.height(),
                  refresh_interval=SLOW_REFRESH)
    assert wallet["daemon_zmq"] == regtest.zmq_pub_endpoint
    node = node_factory(wallet)
    node.start_paymentd()
    wait_for(lambda: f"daemon ZMQ {regtest.zmq_pub_endpoint}: connected" in node.log_text(),
             what="paymentd connected to monerod's ZMQ publisher")
    authid = new_authid("1A")
    txid = regtest.pay(authid, AMOUNT)
    node.wait_message(lambda e: e.topic == "payment.credited" and e.message.txid == txid,
                      what="payment.credited")
    regtest.mine(1)
    mined = time.monotonic()
    node.wait_message(lambda e: e.topic == "payment.confirmed" and e.message.txid == txid
                      and e.message.confirmations == 1, timeout=SLOW_REFRESH / 2,
                      what="payment.confirmed with 1 confirmation")
    took = time.monotonic() - mined
    assert took < 3.0, f"confirmed {took:.2f} s after the block"


def test_issue_16_no_daemon_publisher_blocks_are_followed_by_refreshing(fake, node_factory):
    """wallet.daemon_zmq names an endpoint where nothing listens: paymentd says it
    refreshes on a timer until it connects, and mined payments are still credited."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    node = node_factory({"dialect": "monero", "url": fake.url, "timeout": 1.0,
                         "refresh_interval": 0.5, "daemon_zmq": endpoint})
    node.start_paymentd()
    assert f"ZMQ publisher {endpoint} (blocks by refreshing every 0.5 s until it is " \
           "connected)" in node.log_text()
    authid, txid = new_authid("1A"), "6b" * 32
    with fake.lock:   # a block mines a payment that never was in our pool listing
        fake.height += 1
        fake.mined = [fake_entry(txid, authid.lower(), AMOUNT, height=fake.height - 1)]
    credit = node.wait_message(lambda e: e.topic == "payment.credited"
                               and e.message.txid == txid, what="payment.credited").message
    assert credit.confirmations == 1


class FakeDaemonPublisher:
    """A FAKE of monerod's ZMQ publisher: a PUB socket paymentd connects to, so a test can
    take it away (stopping the shared regtest monerod would end every other test's chain)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.socket = ctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def block(self, height: int) -> None:
        self.socket.send(b'json-minimal-chain_main:{"first_height":%d,"first_prev_id":"00",'
                         b'"ids":["%s"]}' % (height, b"ab" * 32))

    def close(self) -> None:
        self.socket.close(0)


def test_issue_16_daemon_publisher_gone_then_timed_refreshes(fake, node_factory):
    """Blocks come through the publisher while it is connected; when it goes away paymentd
    says so and refreshes on a timer again."""
    ctx = zmq.Context()
    publisher = FakeDaemonPublisher(ctx)
    try:
        node = node_factory({"dialect": "monero", "url": fake.url, "timeout": 1.0,
                             "refresh_interval": 0.5, "daemon_zmq": publisher.endpoint})
        node.start_paymentd()
        wait_for(lambda: f"{publisher.endpoint}: connected" in node.log_text(),
                 what="paymentd connected to the publisher")
        # connected: the timed refresh stops; a published block makes paymentd scan
        time.sleep(0.6)   # let a refresh already under way finish
        refreshes = fake.calls_of("refresh")
        time.sleep(1.5)   # a span with no block: three timed refreshes would fall in it
        assert fake.calls_of("refresh") == refreshes
        authid, txid = new_authid("1A"), "7c" * 32
        with fake.lock:
            fake.height += 1
            fake.mined = [fake_entry(txid, authid.lower(), AMOUNT, height=fake.height - 1)]
        publisher.block(fake.height - 1)
        node.wait_message(lambda e: e.topic == "payment.credited" and e.message.txid == txid,
                          timeout=3.0, what="payment.credited after the published block")
    finally:
        publisher.close()
    wait_for(lambda: "disconnected; refreshing every 0.5 s" in node.log_text(),
             what="the disconnected log line")
    refreshes = fake.calls_of("refresh")
    wait_for(lambda: fake.calls_of("refresh") >= refreshes + 2, timeout=3.0,
             what="timed refreshes again")
    ctx.destroy(linger=0)
