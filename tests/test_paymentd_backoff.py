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
        "wallet": {"url": "http://127.0.0.1:9/json_rpc", "poll_interval": 0.2}},
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


def test_backoff_doubles_from_the_poll_interval_up_to_a_low_cap(paymentd):
    """Issue #14: the backoff had grown to 30 s and payments waited 20 s after the wallet
    answered again; now it stops at MAX_BACKOFF, so a returning wallet is seen soon."""
    assert MAX_BACKOFF <= 2.0
    delays = []
    for _ in range(40):
        paymentd.wallet_down("refused")
        delays.append(paymentd.schedule.backoff())
    assert delays[:3] == [0.2, 0.4, 0.8]
    assert max(delays) == delays[-1] == MAX_BACKOFF
    paymentd.wallet_up()
    assert paymentd.state is Wallet.UP


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


def test_a_step_against_no_wallet_marks_it_down_and_keeps_going(paymentd):
    paymentd.tick()   # port 9 on loopback: connection refused
    assert paymentd.state is Wallet.DOWN and paymentd.failures == 1
    assert paymentd.timers.heap, "the next try is scheduled"
    assert paymentd.schedule.scan_wanted, "the next try reads everything it missed"
