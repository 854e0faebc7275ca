"""paymentd's wallet state edges and backoff (the daemon object, no wallet needed)."""

from __future__ import annotations

import logging

import pytest
import zmq

from lthn import config as config_mod
from lthn.ledger import Ledger
from services.paymentd.main import MAX_BACKOFF, Paymentd, Wallet


@pytest.fixture
def paymentd(tmp_path):
    config = config_mod.parse({
        "provider": {"id": "ab" * 32}, "state_dir": str(tmp_path),
        "wallet": {"url": "http://127.0.0.1:9/json_rpc", "poll_interval": 0.5}},
        "test.yaml")
    ctx = zmq.Context()
    ledger = Ledger.open(config.ledger_path)
    daemon = Paymentd(config, ctx, ledger)
    try:
        yield daemon
    finally:
        daemon.publisher.close()
        ledger.close()
        ctx.destroy(linger=0)


def test_backoff_doubles_from_the_poll_interval_up_to_the_cap(paymentd):
    assert paymentd.next_delay() == 0.5
    delays = []
    for _ in range(10):
        paymentd.wallet_down("refused")
        delays.append(paymentd.next_delay())
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == MAX_BACKOFF and max(delays) == MAX_BACKOFF
    paymentd.wallet_up()
    assert (paymentd.state, paymentd.failures, paymentd.next_delay()) == (Wallet.UP, 0, 0.5)


def test_one_log_line_per_state_change(paymentd, caplog):
    caplog.set_level(logging.INFO, logger="services.paymentd.main")
    paymentd.wallet_up()
    for _ in range(5):
        paymentd.wallet_down("get_height: cannot connect")
    paymentd.wallet_up()
    paymentd.wallet_up()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 3
    assert lines[0].endswith(": up at height 0")
    assert ": down (get_height: cannot connect); retrying with backoff" in lines[1]
    assert lines[2].endswith("up again at height 0 after 5 failed polls")


def test_a_poll_against_no_wallet_marks_it_down_and_keeps_going(paymentd):
    paymentd.poll()   # port 9 on loopback: connection refused
    assert paymentd.state is Wallet.DOWN and paymentd.failures == 1
    assert paymentd.timers.heap, "the next poll is scheduled"
