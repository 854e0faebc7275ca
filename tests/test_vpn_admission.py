"""The VPN login decision (services/vpn/admission.py) on a real ledger: the proxy's rules
(active authid of the right kind of service, source not banned: firewalld's ban rows, an
address or a network, through services/vpn/bans.py), the password, and what a hostile
username gets (issue #18)."""

from __future__ import annotations

import pytest

from lthn import access
from lthn import config as config_mod
from lthn.ledger import Ledger
from services.vpn import admission
from services.vpn.bans import Bans

VPN = "2B00112233445566"
PROXY = "1A00112233445566"
PENDING = "2B0000000000FFFF"


@pytest.fixture
def world(tmp_path):
    config = config_mod.parse({
        "provider": {"id": "ab" * 32}, "state_dir": str(tmp_path),
        "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"},
                     {"id": "2B", "name": "V", "type": "vpn", "cost": "0.001",
                      "firstPrePaidMinutes": 1}],
        "vpn": {"enabled": True}}, "node.yaml")
    ledger = Ledger.open(config.ledger_path)
    with ledger.transaction() as tx:
        for authid, amount in ((VPN, 10**8), (PROXY, 10**8), (PENDING, 1)):
            service = config.service(authid[:2])
            tx.ensure_authid(authid, service.key)
            tx.credit(authid, amount)
            access.reevaluate(tx, tx.authid(authid), access.rules_for(config, service), "t")
        tx.add_ban("10.99.0.66", "bad authids", tx.now + 3600)
        tx.add_ban("10.98.7.0/24", "destination probes", tx.now + 3600)
        tx.add_ban("10.99.0.67", "old", tx.now + 5)       # over by the time we look
        now = tx.now
    bans = Bans()
    bans.load(ledger.bans(now))
    yield config, ledger, lambda ip: bans.reason_for(ip, now + 10)
    ledger.close()


def decide(world, username, password, source="10.99.0.2", problem=""):
    config, ledger, ban_of = world
    return admission.decide(config, username, password, source, ledger.authid, ban_of,
                            problem)


@pytest.mark.parametrize("username,password,source,reason,detail", [
    (VPN, VPN, "10.99.0.2", "", "authid 2B001122... is active"),
    (VPN.lower(), VPN, "10.99.0.2", "", "authid 2B001122... is active"),
    (VPN, VPN.lower(), "10.99.0.67", "", "authid 2B001122... is active"),   # ban expired
    (VPN, "2B00112233445567", "10.99.0.2", "BAD_PASSWORD", "the password is not the authid"),
    (VPN, None, "10.99.0.2", "BAD_PASSWORD", "the password is not the authid"),
    (VPN, VPN + "x" * 300, "10.99.0.2", "BAD_PASSWORD", "the password is not the authid"),
    ("2BFFFFFFFFFFFFFF", "2BFFFFFFFFFFFFFF", "10.99.0.2", "NO_PAYMENT",
     "authid 2BFFFFFF... is unknown"),
    (PENDING, PENDING, "10.99.0.2", "NO_PAYMENT", "authid 2B000000... is not active (PENDING)"),
    (PROXY, PROXY, "10.99.0.2", "NO_PAYMENT", "service 1A is a proxy service, not vpn"),
    ("3C00112233445566", "3C00112233445566", "10.99.0.2", "NO_PAYMENT",
     "authid 3C001122... is unknown"),
    (VPN, VPN, "10.99.0.66", "BANNED", "10.99.0.66 is banned (bad authids)"),
    (VPN, VPN, "10.98.7.200", "BANNED", "10.98.7.200 is banned (destination probes)"),
    (None, None, "10.99.0.2", "BAD_AUTHID", "no username"),
    ("", "", "10.99.0.2", "BAD_AUTHID", "no username"),
    (VPN + "\nclient-kill 0", VPN, "10.99.0.2", "BAD_AUTHID",
     "username '2B00112233445566\\nclient-kill 0' is not an authid"),
    ('2B0011223344556"', VPN, "10.99.0.2", "BAD_AUTHID",
     "username '2B0011223344556\"' is not an authid"),
    ("client-kill 0", "x", "10.99.0.2", "BAD_AUTHID", "username 'client-kill 0' is not an authid"),
    ("A" * 5000, "A", "10.99.0.2", "BAD_AUTHID", f"username '{'A' * 40}...' is not an authid"),
])
def test_decision(world, username, password, source, reason, detail):
    decision = decide(world, username, password, source)
    assert (decision.allowed, decision.reason, decision.detail) == (not reason, reason, detail)
    assert decision.reason in ("", *admission.REASONS)


def test_a_login_block_that_is_not_whole_is_refused_whatever_it_says(world):
    decision = decide(world, VPN, VPN, problem="username given twice")
    assert (decision.allowed, decision.reason) == (False, "BAD_AUTHID")
    assert decision.detail == "malformed login (username given twice)"


def test_a_deactivated_authid_is_refused_until_it_pays_again(world):
    config, ledger, _ = world
    service = config.service("2B")
    with ledger.transaction() as tx:
        access.deactivate(tx, tx.authid(VPN), "credit exhausted", "t")
    assert decide(world, VPN, VPN).reason == "NO_PAYMENT"
    with ledger.transaction() as tx:
        tx.credit(VPN, 10**8)
        access.reevaluate(tx, tx.authid(VPN), access.rules_for(config, service), "t")
    assert decide(world, VPN, VPN).allowed
