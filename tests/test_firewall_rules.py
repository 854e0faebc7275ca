"""The pure parts of firewalld (issue #17): list files, the source decision every door
makes, ban terms, and what the haproxy config counts per source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lthn import config as config_mod
from lthn.address_lists import ListKind, ListUnreadable, parse, read_list
from lthn.haproxy import contract
from lthn.haproxy.firewall_files import acl_entries, bans_map_text
from lthn.ledger import BanRow
from lthn.refusals import Refusal, RefusalKind
from lthn.schema import ConfigError
from lthn.source_policy import SourcePolicy
from services.firewalld import ban_rules
from services.proxy import haproxy_config

PROVIDER = {"id": "ab" * 32}


def cfg(**firewall) -> config_mod.Config:
    return config_mod.parse({"provider": PROVIDER, "state_dir": "/tmp/x",
                             "firewall": firewall}, "/etc/lthn/node.yaml")


# --- list files (Lethean's format) ---

def test_addresses_file_with_comments_ranges_and_malformed_lines():
    text = ("# the deny list\n"
            "203.0.113.7\n"
            "  198.51.100.0/24   # a range\n"
            "10.1.2.3/8\n"
            "2001:DB8::1\n"
            "\n"
            "300.1.1.1\n"
            "host.example\n"
            "1.2.3.4 5.6.7.8\n"
            "203.0.113.7\n")
    parsed = parse(text, ListKind.ADDRESSES, "src_deny.ips")
    assert parsed.entries == ("10.0.0.0/8", "198.51.100.0/24", "203.0.113.7", "2001:db8::1")
    assert [str(p) for p in parsed.problems] == [
        'src_deny.ips:7: "300.1.1.1" is not an IP address or CIDR range',
        'src_deny.ips:8: "host.example" is not an IP address or CIDR range',
        'src_deny.ips:9: "1.2.3.4 5.6.7.8" is not one entry',
    ]


def test_domains_file_takes_subdomain_forms_and_refuses_addresses():
    text = "Example.COM.\n*.evil.org\n.dots.net\n# c\n10.0.0.1\nbad_domain!\nbücher.de\n"
    parsed = parse(text, ListKind.DOMAINS, "dst_deny.doms")
    assert parsed.entries == ("dots.net", "evil.org", "example.com", "xn--bcher-kva.de")
    assert [p.line for p in parsed.problems] == [5, 6]
    assert "an IP address, not a domain" in parsed.problems[0].reason


def test_absent_file_is_empty_and_unreadable_file_raises(tmp_path: Path):
    assert read_list(tmp_path / "none.ips", ListKind.ADDRESSES).entries == ()
    bad = tmp_path / "bad.ips"
    bad.write_bytes(b"10.0.0.1\n\xff\n")
    with pytest.raises(ListUnreadable, match="not UTF-8 text"):
        read_list(bad, ListKind.ADDRESSES)
    with pytest.raises(ListUnreadable, match="cannot read"):
        read_list(tmp_path, ListKind.ADDRESSES)


@given(st.lists(st.ip_addresses(), max_size=20))
def test_every_address_written_is_read_back(addresses):
    text = "".join(f"{a}\n" for a in addresses)
    parsed = parse(text, ListKind.ADDRESSES, "x")
    assert not parsed.problems
    assert set(parsed.entries) == {str(a) for a in addresses}


# --- the source decision (proxy rules and VPN auth alike) ---

def test_source_policy_deny_allow_and_the_allow_list_over_bans():
    policy = SourcePolicy.of(deny=["203.0.113.7"], allow=["203.0.113.0/24", "2001:db8::/32"],
                             never_ban=["127.0.0.1"],
                             bans={"203.0.113.9": 200.0, "203.0.113.10": 50.0})
    assert policy.decide("203.0.113.7", 100) is Refusal.DENY_SRC_IP
    assert policy.decide("198.51.100.1", 100) is Refusal.DENY_SRC_IP    # not allowed
    assert policy.decide("::ffff:203.0.113.8", 100) is None             # mapped IPv4
    # the allow list wins over a ban: its own entries are never banned
    assert policy.decide("203.0.113.9", 100) is None
    assert not policy.may_ban("203.0.113.9")


def test_source_policy_refuses_in_haproxy_s_order_bans_first():
    """A source both banned and denied gets BANNED at VPN auth as at haproxy, whose BANNED
    rule comes before DENY_SRC_IP (test below); it said DENY_SRC_IP at VPN auth."""
    policy = SourcePolicy.of(deny=["198.51.100.0/24"], bans={"198.51.100.5": 200.0})
    assert policy.decide("198.51.100.5", 100) is Refusal.BANNED
    assert policy.decide("198.51.100.5", 300) is Refusal.DENY_SRC_IP   # the ban ended
    text = haproxy_config.render(cfg())
    assert text.index("str(BANNED)") < text.index("str(DENY_SRC_IP)")


def test_source_policy_bans_end_on_time_and_cover_networks():
    policy = SourcePolicy.of(never_ban=["127.0.0.1", "::1"],
                             bans={"198.51.100.0/24": 200.0, "127.0.0.0/8": 200.0})
    assert policy.decide("198.51.100.77", 100) is Refusal.BANNED
    assert policy.decide("198.51.100.77", 200) is None
    assert policy.decide("127.0.0.2", 100) is Refusal.BANNED
    assert policy.decide("127.0.0.1", 100) is None                      # never banned
    assert policy.decide("[::1]", 100) is None
    assert policy.may_ban("127.0.0.2") and not policy.may_ban("127.0.0.1")


# --- ban terms (fail2ban-like tickets with a count) ---

def row(count: int, expires: float) -> BanRow:
    return BanRow("203.0.113.7", "x", expires - 10, expires, count)


def test_ban_terms_escalate_up_to_the_maximum_and_are_forgotten():
    f = cfg(ban_time=60, ban_factor=4, ban_max_time=3600, ban_memory=86400).firewall
    assert ban_rules.next_term(f, None, 1000) == ban_rules.BanTerm(1, 60)
    assert ban_rules.next_term(f, row(1, 900), 1000) == ban_rules.BanTerm(2, 240)
    assert ban_rules.next_term(f, row(2, 900), 1000) == ban_rules.BanTerm(3, 960)
    assert ban_rules.next_term(f, row(3, 900), 1000) == ban_rules.BanTerm(4, 3600)
    assert ban_rules.next_term(f, row(40, 900), 1000) == ban_rules.BanTerm(41, 3600)
    # the last ban ended more than ban_memory ago: a first offence again
    assert ban_rules.next_term(f, row(5, 1000), 1000 + 86401) == ban_rules.BanTerm(1, 60)


def test_thresholds_per_kind_and_no_payment_never_counts():
    f = cfg(refusal_threshold=20, overlimit_threshold=100).firewall
    assert ban_rules.offending_kind(f, {RefusalKind.BAD_AUTHID: 19}) is None
    assert ban_rules.offending_kind(f, {RefusalKind.BAD_AUTHID: 20}) is RefusalKind.BAD_AUTHID
    assert ban_rules.offending_kind(f, {RefusalKind.OVERLIMIT: 99}) is None
    assert ban_rules.offending_kind(f, {RefusalKind.NOT_PAID: 10_000,
                                        RefusalKind.REFUSED_SOURCE: 10_000}) is None
    assert ban_rules.lowest_threshold(f) == 20


# --- the config ---

def test_list_paths_default_beside_the_config_file():
    c = cfg()
    assert c.list_path("src_allow") == Path("/etc/lthn/src_allow.ips")
    assert c.list_path("dst_deny_domains") == Path("/etc/lthn/dst_deny.doms")
    assert cfg(src_deny="/srv/deny.txt").list_path("src_deny") == Path("/srv/deny.txt")


def test_firewall_config_mistakes_are_named():
    with pytest.raises(ConfigError, match=r"firewall.never_ban: \"x\" is not an IP address"):
        cfg(never_ban=["x"])
    with pytest.raises(ConfigError, match="firewall.ban_max_time: must not be shorter"):
        cfg(ban_time=600, ban_max_time=60)
    with pytest.raises(ConfigError, match="firewall.ban_factor: must be 1 or more"):
        cfg(ban_factor=0.5)


# --- what haproxy counts and refuses per source ---

def test_every_banning_refusal_counts_an_offence_in_its_slot_and_in_slot_0():
    text = haproxy_config.render(cfg())
    for refusal in Refusal:
        conditions = re.findall(rf"set-var\(txn\.reason\) str\({refusal.code}\) if (.*)", text)
        slot = contract.OFFENCE_SLOTS.get(refusal.kind)
        for condition in conditions:
            counted = re.findall(rf"sc-inc-gpc\((\d+),2\) if {re.escape(condition)}$", text,
                                 re.M)
            expected = set()
            if slot is not None:
                expected.add(str(slot))
            if refusal.kind.may_ban:
                expected.add("0")
            assert set(counted) == expected, (refusal, condition)


def test_source_rules_come_first_and_limits_spare_the_never_ban_list():
    text = haproxy_config.render(cfg(max_connections=5, max_request_rate=0))
    front = text.split("frontend lthn_proxy", 1)[1]
    assert front.index("track-sc2 src table lthn_sources") < front.index("BANNED") \
        < front.index("DENY_SRC_IP") < front.index("OVERLIMIT") < front.index("BAD_METHOD")
    assert "acl over_connections sc2_conn_cur gt 5" in front
    assert "over_request_rate" not in front                  # 0: no limit
    assert "if over_connections !never_ban || over_connection_rate !never_ban" in front
    assert "x-forwarded-for" not in front.lower() and "expect-proxy" not in front


def test_front_proxies_may_send_the_proxy_protocol_and_nobody_else():
    front = haproxy_config.render(cfg(front_proxies=["192.0.2.5"]))
    assert "acl front_proxy src 192.0.2.5\n" in front
    assert "tcp-request connection expect-proxy layer4 if front_proxy" in front


def test_acl_files_from_the_lists():
    entries = acl_entries({"src_allow": (), "src_deny": ("10.0.0.1",),
                           "dst_deny_domains": ("evil.org",)})
    assert entries["src_allow"] == ("0.0.0.0/0", "::/0")     # empty list: everyone
    assert entries["ban_exempt"] == ()
    assert entries["dst_deny_subdomains"] == (".evil.org",)
    assert set(entries) == set(contract.FIREWALL_ACLS)
    # squid warned about the empty destination files at every start (#15: a clean start)
    assert entries["dst_deny_ips"] == ("0.0.0.0/32",)
    assert not any(d.startswith(":") for d in entries["dst_deny_subdomains"])
    assert acl_entries({})["dst_deny_subdomains"] == (".empty.lthn.invalid",)
    assert bans_map_text({"10.0.0.1": 100.2}) == "10.0.0.1 101\n"   # never ends early


# --- nftables sets (the kernel refuses overlapping intervals) ---

def test_nftables_sets_carry_time_left_and_no_overlaps():
    from services.firewalld.nftables import sets_script, table_name
    table = table_name("/var/lib/lthn")
    assert table.startswith("lthn_fw_") and table != table_name("/var/lib/lthn2")
    script = sets_script(table, {"203.0.113.7": 160.2, "203.0.113.0/24": 1100.0,
                                 "198.51.100.1": 90.0, "2001:db8::1": 130.0}, 100.0)
    assert f"flush set inet {table} banned4" in script
    assert "203.0.113.0/24 timeout 1000s" in script
    assert "203.0.113.7" not in script            # inside the /24 already banned
    assert "198.51.100.1" not in script           # ended
    assert f"add element inet {table} banned6 {{ 2001:db8::1 timeout 30s }}" in script


def test_haproxy_refuses_an_offender_at_firewalld_thresholds_itself():
    front = haproxy_config.render(cfg(refusal_threshold=7, overlimit_threshold=50))
    assert "acl offences_over sc_gpc_rate(0,2) ge 7" in front
    assert "acl offences_bad_authid sc_gpc_rate(1,2) ge 7" in front
    assert "acl offences_overlimit sc_gpc_rate(4,2) ge 50" in front
    assert ("http-request set-var(txn.banned) bool(true) if src_banned || offences_over "
            "offences_bad_authid ||") in front
    assert "str(BANNED) if banned !never_ban !ban_exempt" in front


def test_nftables_changes_only_what_changed():
    from services.firewalld.nftables import delta_script
    applied = {"203.0.113.7": 500.0, "203.0.113.8": 500.0, "2001:db8::1": 500.0}
    bans = {"203.0.113.7": 500.0, "203.0.113.8": 900.0, "203.0.113.9": 300.0}
    script = delta_script("t", applied, bans, 100.0)
    assert script == ("delete element inet t banned4 { 203.0.113.8 }\n"
                      "add element inet t banned4 { 203.0.113.8 timeout 800s, "
                      "203.0.113.9 timeout 200s }\n"
                      "delete element inet t banned6 { 2001:db8::1 }\n")
    assert delta_script("t", applied, applied, 100.0) == ""
    assert delta_script("t", {}, {"203.0.113.0/24": 500.0}, 100.0) is None   # a range
