"""The wallet JSON-RPC client: strict parsing of real answers, garbage refused.

The answers below were captured from monero-wallet-rpc 0.18 on regtest (addresses cut).
"""

from __future__ import annotations

import copy

import pytest

from services.paymentd.wallet_rpc import (
    Transfer,
    WalletAnswerError,
    WalletClient,
    WalletRpcError,
    WalletUnreachable,
    parse_transfers,
)
from tests.fixtures.fake_wallet import FakeWalletServer
from tests.fixtures.regtest import new_authid

TXID = "2a7f14b152d9d3d7c02e3811ca8a1ca0aa0b0ec029081f713e2449c2696d81ff"

# expect: one pool transfer, 0 confirmations, height 0
POOL_ANSWER = {"pool": [{
    "address": "49k729h2Y5k4...", "amount": 1200000, "amounts": [1200000],
    "double_spend_seen": False, "fee": 2618400000, "height": 0, "locked": True, "note": "",
    "payment_id": "1a00112233445566", "subaddr_index": {"major": 0, "minor": 0},
    "subaddr_indices": [{"major": 0, "minor": 0}], "suggested_confirmations_threshold": 1,
    "timestamp": 1795636273, "txid": TXID, "type": "pool", "unlock_time": 0}]}

# expect: the same transfer mined at height 111 with 1 confirmation
IN_ANSWER = {"in": [{
    "address": "49k729h2Y5k4...", "amount": 1200000, "amounts": [1200000],
    "confirmations": 1, "double_spend_seen": False, "fee": 2618400000, "height": 111,
    "locked": True, "note": "", "payment_id": "1a00112233445566",
    "subaddr_index": {"major": 0, "minor": 0}, "subaddr_indices": [{"major": 0, "minor": 0}],
    "suggested_confirmations_threshold": 1, "timestamp": 1795636273, "txid": TXID,
    "type": "in", "unlock_time": 0}]}


def test_pool_answer_parses_to_a_zero_confirmation_transfer():
    assert parse_transfers("get_transfers", POOL_ANSWER) == [Transfer(
        txid=TXID, payment_id="1a00112233445566", amount=1200000, height=0,
        confirmations=0, in_pool=True, double_spend_seen=False, subaddr=(0, 0))]


def test_mined_answer_parses_with_height_and_confirmations():
    (t,) = parse_transfers("get_transfers", IN_ANSWER)
    assert (t.height, t.confirmations, t.in_pool, t.amount) == (111, 1, False, 1200000)


def test_empty_answer_is_an_empty_object():
    assert parse_transfers("get_transfers", {}) == []


def _broken(answer: dict, key: str, field: str, value: object) -> dict:
    bad = copy.deepcopy(answer)
    if value is KeyError:
        del bad[key][0][field]
    else:
        bad[key][0][field] = value
    return bad


@pytest.mark.parametrize("answer, expected", [
    (_broken(IN_ANSWER, "in", "amount", "1200000"), "result.in[0].amount: must be int"),
    (_broken(IN_ANSWER, "in", "amount", -5), "result.in[0].amount: must not be negative"),
    (_broken(IN_ANSWER, "in", "amount", 1.2e6), "result.in[0].amount: must be int"),
    (_broken(IN_ANSWER, "in", "amount", True), "result.in[0].amount: must be int"),
    (_broken(IN_ANSWER, "in", "amount", KeyError), "result.in[0].amount: missing"),
    (_broken(IN_ANSWER, "in", "confirmations", KeyError),
     "result.in[0].confirmations: missing"),
    (_broken(IN_ANSWER, "in", "txid", "zz" * 32), "result.in[0].txid: not 64 hex"),
    (_broken(IN_ANSWER, "in", "txid", None), "result.in[0].txid: must be str"),
    (_broken(IN_ANSWER, "in", "payment_id", 7), "result.in[0].payment_id: must be str"),
    (_broken(IN_ANSWER, "in", "type", "pool"), "result.in[0].type: 'pool' in the in list"),
    (_broken(POOL_ANSWER, "pool", "double_spend_seen", "no"),
     "result.pool[0].double_spend_seen: must be bool"),
    (_broken(POOL_ANSWER, "pool", "subaddr_index", {"major": 0}),
     "result.pool[0].subaddr_index.minor: missing"),
    (_broken(IN_ANSWER, "in", "amount", 2**64 - 1),
     "result.in[0].amount: 18446744073709551615 is more than"),
    (_broken(IN_ANSWER, "in", "unlock_time", "0"), "result.in[0].unlock_time: must be int"),
    ({"in": {"txid": TXID}}, "result.in: must be a list"),
    ({"in": ["x"]}, "result.in[0]: must be an object"),
    (["in"], "result must be an object"),
])
def test_malformed_answers_are_refused_whole(answer, expected):
    with pytest.raises(WalletAnswerError) as err:
        parse_transfers("get_transfers", answer)
    assert expected in str(err.value)


def test_one_bad_entry_refuses_the_whole_answer():
    answer = {"in": IN_ANSWER["in"] + _broken(IN_ANSWER, "in", "amount", "1")["in"]}
    with pytest.raises(WalletAnswerError, match=r"result.in\[1\].amount"):
        parse_transfers("get_transfers", answer)


# --- the client against the fake wallet: transport failures a real wallet won't produce

@pytest.fixture
def fake():
    server = FakeWalletServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode, error, text", [
    ("http500", WalletUnreachable, "HTTP 500"),
    ("garbage", WalletAnswerError, "answer is not JSON"),
    ("hang", WalletUnreachable, "no answer within 0.3 s"),
    ("bad_shape", WalletAnswerError, "amount: must be int"),
])
def test_client_turns_bad_answers_into_wallet_errors(fake, mode, error, text):
    fake.mined = [{**IN_ANSWER["in"][0], "height": 250}]
    fake.mode, fake.hang_seconds = mode, 1.0
    client = WalletClient(fake.url, timeout=0.3)
    with pytest.raises(error, match=text):
        client.get_transfers(0)


def test_lethean_dialect_asks_get_vpn_transfers(fake):
    fake.mined = [{**IN_ANSWER["in"][0], "height": 250}]
    client = WalletClient(fake.url, dialect="lethean")
    assert [t.txid for t in client.get_transfers(10)] == [TXID]
    assert fake.calls_of("get_vpn_transfers") == 1 and fake.calls_of("get_transfers") == 0


def test_min_height_is_passed_and_exclusive(fake):
    fake.mined = [{**IN_ANSWER["in"][0], "height": 250}]
    client = WalletClient(fake.url)
    assert client.get_transfers(250) == []
    assert len(client.get_transfers(249)) == 1


def test_unreachable_wallet(fake):
    url = fake.url
    fake.stop()
    with pytest.raises(WalletUnreachable, match="cannot connect"):
        WalletClient(url, timeout=1.0).get_height()


# --- the client against the real regtest wallet

def test_real_wallet_pool_then_mined(regtest):
    client = WalletClient(regtest.provider_url, regtest.user, regtest.password, "monero")
    client.refresh()
    start = client.get_height()
    authid = new_authid("1A")
    txid = regtest.pay(authid, 1_234_567)
    listed = {t.txid: t for t in client.get_transfers(start - 1)}
    assert listed[txid].in_pool and listed[txid].payment_id == authid.lower()
    assert listed[txid].amount == 1_234_567
    regtest.mine(2)
    client.refresh()
    height = client.get_height()
    (mined,) = [t for t in client.get_transfers(start - 1) if t.txid == txid]
    assert not mined.in_pool and mined.confirmations == height - mined.height == 2
    assert client.get_transfer_by_txid(txid) == [mined]
    assert client.get_transfer_by_txid("00" * 32) is None


def test_real_wallet_pool_listing_needs_no_refresh(regtest):
    """The pool-only listing paymentd asks several times a second (issue #16) shows a
    payment without any refresh and holds only pool entries; once the block that mines
    it is refreshed into the wallet, the payment leaves it for the mined list."""
    client = WalletClient(regtest.provider_url, regtest.user, regtest.password, "monero")
    client.refresh()
    start = client.get_height()
    authid = new_authid("1A")
    txid = regtest.pay(authid, 1_234_567)
    pool = client.get_pool_transfers()
    assert txid in {t.txid for t in pool}
    assert all(t.in_pool and t.confirmations == 0 for t in pool)
    regtest.mine(1)
    client.refresh()
    assert txid not in {t.txid for t in client.get_pool_transfers()}
    (mined,) = [t for t in client.get_transfers(start - 1) if t.txid == txid]
    assert not mined.in_pool and mined.confirmations >= 1


def test_real_wallet_refuses_a_wrong_password(regtest):
    client = WalletClient(regtest.provider_url, regtest.user, "wrong", "monero")
    with pytest.raises(WalletUnreachable, match="HTTP 401"):
        client.get_height()


def test_real_wallet_rpc_error_is_typed(regtest):
    client = WalletClient(regtest.provider_url, regtest.user, regtest.password)
    with pytest.raises(WalletRpcError) as err:
        client.call("make_integrated_address", {"payment_id": "xyz"})
    assert err.value.code < 0
