"""The VPN login decision (services/vpn/admission.py) on a real ledger: the proxy's rules
(active authid of the right kind of service; the source by lthn/source_policy.py through
services/vpn/source_rules.py: the operator's deny and allow lists, firewalld's ban rows,
an address or a network, the exemptions), the password, and what a hostile username gets
(issues #17, #18)."""

from __future__ import annotations

import pytest

from lthn import access
from lthn import config as config_mod
from lthn.ledger import Ledger
from services.vpn import admission
from services.vpn.source_rules import SourceRules

VPN = "2B00112233445566"
PROXY = "1A00112233445566"
PENDING = "2B0000000000FFFF"


def make_config(tmp_path, **firewall: object) -> config_mod.Config:
    return config_mod.parse({
        "provider": {"id": "ab" * 32}, "state_dir": str(tmp_path),
        "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"},
                     {"id": "2B", "name": "V", "type": "vpn", "cost": "0.001",
                      "firstPrePaidMinutes": 1}],
        "firewall": {"src_deny": str(tmp_path / "src_deny.ips"),
                     "src_allow": str(tmp_path / "src_allow.ips"), **firewall},
        "vpn": {"enabled": True}}, str(tmp_path / "node.yaml"))


class World:
    """A ledger with paid, unpaid and proxy authids and three bans; the node's source
    rules as vpnd holds them; `lists(...)` writes the list files and re-reads them."""

    def __init__(self, tmp_path, **firewall: object) -> None:
        self.dir = tmp_path
        self.config = make_config(tmp_path, **firewall)
        self.ledger = Ledger.open(self.config.ledger_path)
        with self.ledger.transaction() as tx:
            for authid, amount in ((VPN, 10**8), (PROXY, 10**8), (PENDING, 1)):
                service = self.config.service(authid[:2])
                tx.ensure_authid(authid, service.key)
                tx.credit(authid, amount)
                access.reevaluate(tx, tx.authid(authid), access.rules_for(self.config, service),
                                  "t")
            tx.add_ban("10.99.0.66", "bad authids", tx.now + 3600)
            tx.add_ban("10.98.7.0/24", "destination probes", tx.now + 3600)
            tx.add_ban("10.99.0.67", "old", tx.now + 5)       # over by the time we look
            self.now = tx.now + 10
        self.rules = SourceRules(self.config)
        self.rules.poll_lists()
        self.rules.load_bans(self.ledger.bans(self.now - 10))

    def lists(self, deny: str | None = None, allow: str | None = None) -> None:
        for name, text in (("src_deny.ips", deny), ("src_allow.ips", allow)):
            path = self.dir / name
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
        assert self.rules.poll_lists()

    def decide(self, username, password, source="10.99.0.2", problem=""):
        return admission.decide(self.config, username, password, source, self.ledger.authid,
                                lambda ip: self.rules.refusal(ip, self.now), problem)


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path)
    yield world
    world.ledger.close()


def decide(world, username, password, source="10.99.0.2", problem=""):
    return world.decide(username, password, source, problem)


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
    config, ledger = world.config, world.ledger
    service = config.service("2B")
    with ledger.transaction() as tx:
        access.deactivate(tx, tx.authid(VPN), "credit exhausted", "t")
    assert decide(world, VPN, VPN).reason == "NO_PAYMENT"
    with ledger.transaction() as tx:
        tx.credit(VPN, 10**8)
        access.reevaluate(tx, tx.authid(VPN), access.rules_for(config, service), "t")
    assert decide(world, VPN, VPN).allowed


# --- the source: the operator's lists, the bans and their exemptions (issue #17) ---

def test_a_source_in_the_deny_list_is_refused_deny_src_ip(world):
    world.lists(deny="# scanners\n10.99.0.5\n10.97.0.0/16  # a whole range\n")
    decision = decide(world, VPN, VPN, "10.99.0.5")
    assert (decision.allowed, decision.reason, decision.detail) == (
        False, "DENY_SRC_IP", "10.99.0.5 is in the source deny list (src_deny.ips)")
    assert decide(world, VPN, VPN, "10.97.200.1").reason == "DENY_SRC_IP"
    assert decide(world, VPN, VPN, "10.99.0.6").allowed
    assert "DENY_SRC_IP" in admission.REASONS


def test_a_denied_source_is_refused_whatever_it_sent(world):
    """Source first, as haproxy refuses a source before reading its request: a denied
    source's bad logins are DENY_SRC_IP (never counted toward a ban), not BAD_AUTHID."""
    world.lists(deny="10.99.0.5\n")
    for username, password, problem in (("nonsense", "x", ""), (VPN, "wrong", ""),
                                        (VPN, VPN, "username given twice")):
        decision = decide(world, username, password, "10.99.0.5", problem)
        assert (decision.allowed, decision.reason) == (False, "DENY_SRC_IP"), username


def test_a_non_empty_allow_list_admits_only_its_sources(world):
    world.lists(allow="10.99.0.0/30\n2001:db8::/32\n")
    assert decide(world, VPN, VPN, "10.99.0.2").allowed
    assert decide(world, VPN, VPN, "2001:db8::7").allowed
    decision = decide(world, VPN, VPN, "10.99.0.9")
    assert (decision.allowed, decision.reason, decision.detail) == (
        False, "DENY_SRC_IP", "10.99.0.9 is not in the source allow list (src_allow.ips)")
    assert decide(world, VPN, VPN, "2001:db9::7").reason == "DENY_SRC_IP"
    # the deny list wins over the allow list
    world.lists(deny="10.99.0.2\n", allow="10.99.0.0/30\n")
    assert decide(world, VPN, VPN, "10.99.0.2").reason == "DENY_SRC_IP"
    # an emptied allow list admits everyone again
    world.lists(allow="# nobody listed\n")
    assert decide(world, VPN, VPN, "10.99.0.9").allowed


def test_an_allow_listed_source_is_never_banned(world):
    assert decide(world, VPN, VPN, "10.99.0.66").reason == "BANNED"
    world.lists(allow="10.99.0.66\n10.98.7.0/24\n")
    assert decide(world, VPN, VPN, "10.99.0.66").allowed
    assert decide(world, VPN, VPN, "10.98.7.200").allowed
    # the exemption is from bans, not from the rest: an unpaid authid is still refused
    assert decide(world, PENDING, PENDING, "10.99.0.66").reason == "NO_PAYMENT"


def test_never_ban_sources_are_not_refused_for_a_ban(tmp_path):
    world = World(tmp_path, never_ban=["10.99.0.66", "10.98.7.128/25"])
    try:
        assert decide(world, VPN, VPN, "10.99.0.66").allowed
        assert decide(world, VPN, VPN, "10.98.7.200").allowed
        decision = decide(world, VPN, VPN, "10.98.7.3")          # outside the exemption
        assert (decision.reason, decision.detail) == (
            "BANNED", "10.98.7.3 is banned (destination probes)")
        # never_ban does not let a denied source in
        world.lists(deny="10.99.0.66\n")
        assert decide(world, VPN, VPN, "10.99.0.66").reason == "DENY_SRC_IP"
    finally:
        world.ledger.close()


def test_a_lifted_ban_admits_at_the_next_load(world):
    with world.ledger.transaction() as tx:
        assert tx.lift_ban("10.99.0.66") is not None
    world.rules.load_bans(world.ledger.bans())
    assert decide(world, VPN, VPN, "10.99.0.66").allowed
    assert decide(world, VPN, VPN, "10.98.7.200").reason == "BANNED"
