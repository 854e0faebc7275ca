"""Issue #3: paymentd credits payments from a real wallet, exactly once.

Real parts: monerod regtest + monero-wallet-rpc (the `regtest` fixture), a real
lthn-busd and a real lthn-paymentd process on a config written to tmp_path; the bus is
watched with lthn.bus.Subscriber and the ledger read with lthn.ledger.Ledger. The fake
wallet is used only for what a real wallet cannot be made to answer (garbage, HTTP 500,
a reorg removing a mined transfer).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from lthn.bus import Envelope
from lthn.demo.regtest import RegtestChain
from tests.fixtures.common import wait_for
from tests.fixtures.fake_wallet import FakeWalletServer, fake_entry
from tests.fixtures.payment_node import AMOUNT, PROVIDER_ID, REPO, PaymentNode
from tests.fixtures.regtest import new_authid


def _wallet(regtest: RegtestChain) -> dict:
    """The regtest wallet section, scanning from the current block: earlier tests'
    payments are not this test's business (start_height for a fresh ledger, issue #3)."""
    return dict(regtest.wallet_section(), start_height=regtest.height())


def _credited(node: PaymentNode, txid: str, timeout: float = 15.0) -> Envelope:
    return node.wait_message(lambda e: e.topic == "payment.credited" and e.message.txid == txid,
                             timeout=timeout, what=f"payment.credited for {txid[:8]}")


# --- against the real regtest wallet ---

def test_issue_3_payment_credited_once_then_confirmations_rise(regtest, node_factory):
    """A payment is credited once at 0 confirmations, then confirmations rise per block."""
    node = node_factory(_wallet(regtest))
    node.start_paymentd()
    authid = new_authid("1A")
    txid = regtest.pay(authid.lower(), AMOUNT)

    credit = _credited(node, txid).message
    assert (credit.authid, credit.amount, credit.confirmations) == (authid, AMOUNT, 0)
    assert credit.spendable
    node.wait_message(lambda e: e.topic == "authid.activated" and e.message.authid == authid,
                      what="authid.activated")
    assert f"authid {authid[:8]}...: credited {AMOUNT} (txid {txid[:8]}..., " \
           "0 confirmations)" in node.log_text()

    for expected in (1, 2):
        regtest.mine(1)
        node.wait_message(lambda e, n=expected: e.topic == "payment.confirmed"
                          and e.message.txid == txid and e.message.confirmations == n,
                          what=f"payment.confirmed with {expected} confirmations")

    assert len(node.messages("payment.credited", txid=txid)) == 1
    ledger = node.ledger()
    try:
        (payment,) = ledger.payments_of(authid)
        assert (payment.txid, payment.amount, payment.state) == (txid, AMOUNT, "in")
        assert payment.confirmations >= 2
        row = ledger.authid(authid)
        assert row is not None and (row.credit, row.pending, row.state) == (
            AMOUNT, 0, "ACTIVE")
        assert [e for _, e, _, _ in ledger.audit_lines(authid)].count("credited") == 1
    finally:
        ledger.close()


def test_issue_3_sigkill_and_restart_credits_nothing_twice(regtest, node_factory):
    """SIGKILL between polls: after restart nothing is credited twice, and payments made
    while paymentd was down (one mined, one in the pool) are credited."""
    node = node_factory(_wallet(regtest))
    node.start_paymentd()
    first = new_authid("1A")
    txid_first = regtest.pay(first, AMOUNT)
    _credited(node, txid_first)
    node.kill_paymentd()

    mined_while_down = new_authid("1A")
    txid_mined = regtest.pay(mined_while_down, AMOUNT)
    regtest.mine(1)
    pooled_while_down = new_authid("1A")
    txid_pool = regtest.pay(pooled_while_down, AMOUNT + 1)

    node.start_paymentd()
    # the first poll after a restart may publish before the bus forwards our subscription
    # to the new process (pub/sub slow joiner): the ledger is the source of truth here
    def credited_in_ledger(authid: str) -> bool:
        ledger = node.ledger()
        try:
            row = ledger.authid(authid)
            return row is not None and row.credit > 0
        finally:
            ledger.close()
    wait_for(lambda: credited_in_ledger(mined_while_down), what="the mined payment credited")
    wait_for(lambda: credited_in_ledger(pooled_while_down), what="the pool payment credited")
    regtest.mine(1)
    node.wait_message(lambda e: e.topic == "payment.confirmed" and e.message.txid == txid_pool,
                      what="the pool payment confirmed")

    assert len(node.messages("payment.credited", txid=txid_first)) == 1
    ledger = node.ledger()
    try:
        for authid, amount, txid in ((first, AMOUNT, txid_first),
                                     (mined_while_down, AMOUNT, txid_mined),
                                     (pooled_while_down, AMOUNT + 1, txid_pool)):
            row = ledger.authid(authid)
            assert row is not None and row.credit == amount, authid
            assert [p.txid for p in ledger.payments_of(authid)] == [txid]
            assert [e for _, e, _, _ in ledger.audit_lines(authid)].count("credited") == 1
    finally:
        ledger.close()


def test_issue_3_unknown_service_is_not_credited(regtest, node_factory):
    """A payment id naming no configured service: not credited, the reason recorded."""
    node = node_factory(_wallet(regtest))
    node.start_paymentd()
    stranger = new_authid("1B")
    txid = regtest.pay(stranger, AMOUNT)

    rejected = node.wait_message(
        lambda e: e.topic == "payment.rejected" and e.message.txid == txid,
        what="payment.rejected").message
    assert rejected.reason == "unknown service 1B"
    assert rejected.payment_id.upper() == stranger and rejected.amount == AMOUNT
    regtest.mine(1)
    # a later poll sees it mined and still credits nothing, nor rejects it twice
    wait_for(lambda: "payment id" in node.log_text(), what="rejection log line")
    ledger = node.ledger()
    try:
        wait_for(lambda: int(ledger.meta("paymentd.scan_height") or 0) >= regtest.height() - 1,
                 what="paymentd to scan the new block")
        assert ledger.authid(stranger) is None
        assert [(t, r) for t, _, _, r in ledger.rejected() if t == txid] == [
            (txid, "unknown service 1B")]
        assert [e for _, e, _, d in ledger.audit_lines() if d.get("txid") == txid] == [
            "rejected"]
    finally:
        ledger.close()
    assert node.messages("payment.credited", txid=txid) == []
    assert len(node.messages("payment.rejected", txid=txid)) == 1


def test_issue_3_wallet_rpc_restart_paymentd_survives_and_catches_up(regtest, node_factory):
    """The provider's wallet-rpc stops for a while: paymentd logs it once, keeps running,
    and credits what was paid meanwhile when the wallet is back."""
    node = node_factory(_wallet(regtest))
    node.start_paymentd()
    authid = new_authid("1A")
    address = regtest.integrated_address(authid)  # needs the provider wallet: make it now
    regtest.stop_provider_wallet()
    try:
        down = node.wait_message(lambda e: e.topic == "wallet.state" and not e.message.up,
                                 what="wallet.state down")
        txid = regtest.pay_address(address, AMOUNT)
        regtest.mine(1)
        wait_for(lambda: node.log_text().count("down (") >= 1, what="the down log line")
        assert node.paymentd is not None and node.paymentd.poll() is None
    finally:
        regtest.start_provider_wallet()
    node.wait_message(lambda e: e.topic == "wallet.state" and e.message.up
                      and e.seq > down.seq, timeout=40, what="wallet.state up again")
    credit = _credited(node, txid, timeout=20).message
    assert credit.authid == authid and credit.confirmations >= 1
    assert node.log_text().count(": down (") == 1, "one line per state change"
    assert "up again at height" in node.log_text()


# --- against the fake wallet: answers a real wallet cannot be made to give ---

def _fake_wallet_section(fake: FakeWalletServer) -> dict:
    return {"dialect": "monero", "url": fake.url, "refresh_interval": 0.2, "timeout": 1.0}


@pytest.mark.parametrize("mode", ["garbage", "http500", "bad_shape", "hang"])
def test_issue_3_bad_wallet_answers_credit_nothing_and_paymentd_recovers(
        fake, node_factory, mode):
    """Garbage JSON, HTTP 500, a wrong field type, a hung answer: nothing is credited,
    paymentd says the wallet is down, keeps running, and credits once answers are good."""
    fake.hang_seconds = 3.0
    authid = new_authid("1A")
    txid = "ab" * 32
    node = node_factory(_fake_wallet_section(fake))
    node.start_paymentd()  # with the wallet up: the bus path is live before it goes bad
    with fake.lock:
        fake.mined = [fake_entry(txid, authid.lower(), AMOUNT, height=199, confirmations=1)]
        fake.mode = mode
    down = node.wait_message(lambda e: e.topic == "wallet.state" and not e.message.up,
                             what="wallet.state down")
    assert down.message.error
    calls = len(fake.calls)
    wait_for(lambda: len(fake.calls) > calls, timeout=10, what="a retry")
    assert node.messages("payment.credited") == []
    assert node.paymentd is not None and node.paymentd.poll() is None

    fake.mode = "ok"
    credit = _credited(node, txid).message
    assert (credit.authid, credit.amount) == (authid, AMOUNT)
    ledger = node.ledger()
    try:
        assert ledger.authid(authid) is not None
        assert ledger.authid(authid).credit == AMOUNT
    finally:
        ledger.close()


def test_issue_3_reorg_removing_a_mined_transfer_revokes_unspendable_credit(
        fake, node_factory):
    """A mined transfer (1 of 2 needed confirmations) disappears in a reorg: its credit is
    revoked and published; a spendable payment of another authid keeps its credit."""
    services = [{"id": "1A", "name": "proxy", "type": "proxy", "cost": "0.001",
                 "firstVerificationsNeeded": 2},
                {"id": "2B", "name": "fast", "type": "proxy", "cost": "0.001"}]
    slow, fast = new_authid("1A"), new_authid("2B")
    txid_slow, txid_fast = "cd" * 32, "ef" * 32
    node = node_factory(_fake_wallet_section(fake), services)
    node.start_paymentd()
    with fake.lock:
        fake.mined = [
            fake_entry(txid_slow, slow.lower(), AMOUNT, height=199, confirmations=1),
            fake_entry(txid_fast, fast.lower(), AMOUNT, height=199, confirmations=1)]
    assert not _credited(node, txid_slow).message.spendable
    assert _credited(node, txid_fast).message.spendable

    with fake.lock:  # the reorg: block 199 replaced by one without these transfers
        fake.mined = []
    revoked = node.wait_message(lambda e: e.topic == "payment.revoked", what="revocation")
    assert (revoked.message.authid, revoked.message.txid, revoked.message.amount) == (
        slow, txid_slow, AMOUNT)
    assert revoked.message.reason == "removed by a reorg"
    assert fake.calls_of("get_transfer_by_txid") >= 2, "absence confirmed by txid first"
    wait_for(lambda: "credit kept" in node.log_text(), what="the vanished log line")
    ledger = node.ledger()
    try:
        slow_row, fast_row = ledger.authid(slow), ledger.authid(fast)
        assert slow_row is not None and (slow_row.credit, slow_row.pending) == (0, 0)
        assert fast_row is not None and fast_row.credit == AMOUNT
        assert [p.state for p in ledger.payments_of(slow)] == ["revoked"]
    finally:
        ledger.close()
    assert len(node.messages("payment.revoked")) == 1


def test_issue_3_a_wallet_behind_the_scan_height_revokes_nothing(fake, node_factory):
    """A wallet restored and still syncing (height below what was scanned) does not list a
    mined payment yet: that silence revokes nothing until the wallet has caught up."""
    services = [{"id": "1A", "name": "proxy", "type": "proxy", "cost": "0.001",
                 "firstVerificationsNeeded": 5}]
    authid, txid = new_authid("1A"), "34" * 32
    node = node_factory(_fake_wallet_section(fake), services)
    node.start_paymentd()
    with fake.lock:
        fake.mined = [fake_entry(txid, authid.lower(), AMOUNT, height=199, confirmations=1)]
    _credited(node, txid)
    with fake.lock:
        fake.height, fake.mined = 20, []
    polls = fake.calls_of("get_height")
    wait_for(lambda: fake.calls_of("get_height") >= polls + 5, what="five more polls")
    assert node.messages("payment.revoked") == []
    assert fake.calls_of("get_transfer_by_txid") == 0
    with fake.lock:
        fake.height = 201
    revoked = node.wait_message(lambda e: e.topic == "payment.revoked", what="revocation")
    assert revoked.message.txid == txid


def test_issue_3_pool_transfer_that_vanishes_is_revoked(fake, node_factory):
    """A pool transfer that leaves the pool unmined (needing 1 confirmation) is revoked."""
    services = [{"id": "1A", "name": "proxy", "type": "proxy", "cost": "0.001",
                 "firstVerificationsNeeded": 1}]
    authid, txid = new_authid("1A"), "12" * 32
    node = node_factory(_fake_wallet_section(fake), services)
    node.start_paymentd()
    with fake.lock:
        fake.pool = [fake_entry(txid, authid.lower(), AMOUNT)]
    assert _credited(node, txid).message.confirmations == 0
    with fake.lock:
        fake.pool = []
    revoked = node.wait_message(lambda e: e.topic == "payment.revoked", what="revocation")
    assert revoked.message.reason == "left the pool unmined"


def test_issue_3_paymentd_config_error_exits_2(tmp_path):
    """A wrong wallet setting: paymentd prints the key and exits 2, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"provider": {"id": PROVIDER_ID},
                                    "state_dir": str(tmp_path / "s"),
                                    "wallet": {"poll_interval": 0}}))
    result = subprocess.run([sys.executable, "-m", "services.paymentd.main", "-c", str(path)],
                            capture_output=True, text=True, timeout=30,
                            cwd=str(REPO))
    assert result.returncode == 2
    assert "wallet.poll_interval: must be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr
