"""lthn.destination_policy: the denied table agrees with Python's `is_global` (it covers
every address Python calls not global, and lists nothing Python calls global at a block's
edges), exceptions win, extra ranges add."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from lthn import destination_policy as policy

DENIED = policy.denied_networks()


def denied(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip in n for n in DENIED)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_address_python_calls_not_global_is_denied(value):
    ip = ipaddress.IPv4Address(value)
    if not ip.is_global or ip.is_multicast:
        assert denied(ip), ip


def _around_blocks() -> st.SearchStrategy[ipaddress.IPv6Address]:
    """IPv6 addresses in, at the edges of and just outside every listed block (random
    128-bit addresses would almost never land in one)."""
    edges = []
    for text in (*policy.NOT_GLOBAL_V6, "2001:db8::/32", "2001:10::/28", "2001:2::/48"):
        n = ipaddress.IPv6Network(text)
        edges += [int(n.network_address), int(n.broadcast_address)]
    base = st.sampled_from(edges)
    return st.builds(lambda b, d: ipaddress.IPv6Address(max(0, min(2**128 - 1, b + d))),
                     base, st.integers(min_value=-(2**20), max_value=2**20))


@given(st.one_of(_around_blocks(), st.integers(min_value=0, max_value=2**128 - 1).map(
    ipaddress.IPv6Address)))
def test_every_ipv6_address_python_calls_not_global_is_denied(ip):
    if not ip.is_global or ip.is_multicast:
        assert denied(ip), ip


# stricter than some Pythons on purpose: IANA calls all of 192.0.0.0/24 not globally
# reachable, Python 3.11 only parts of it; in IPv6, ::/96 (deprecated IPv4-compatible)
# and the blocks newer Pythons know (2002::/16, 3fff::/20, ...) are checked only one way
STRICTER = {"192.0.0.0/24"}


def test_block_edges_are_not_global_for_python_too():
    """No block is a typo that would refuse a global range: both ends of every IPv4
    block, and of every IPv6 block Python knows, are not global (or multicast)."""
    for text in set(policy.NOT_GLOBAL_V4) - STRICTER:
        n = ipaddress.IPv4Network(text)
        for ip in (n.network_address, n.broadcast_address):
            assert not ip.is_global or ip.is_multicast, ip
    for text in ("::/128", "::1/128", "::ffff:0:0/96", "100::/64", "2001::/23", "2001:db8::/32",
                 "fc00::/7", "fe80::/10", "ff00::/8"):
        n = ipaddress.IPv6Network(text)
        for ip in (n.network_address, n.broadcast_address):
            assert not ip.is_global or ip.is_multicast, ip


def test_global_addresses_pass_and_exceptions_win():
    assert policy.is_allowed("1.1.1.1") and policy.is_allowed("2606:4700::1111")
    assert not policy.is_allowed("10.1.2.3") and not policy.is_allowed("fe80::1")
    assert not policy.is_allowed("2002:a00:1::1")          # 6to4 wrapping 10.0.0.1
    assert policy.is_allowed("10.97.0.2", allow=["10.97.0.2/32"])
    assert not policy.is_allowed("10.97.0.3", allow=["10.97.0.2/32"])
    assert not policy.is_allowed("1.1.1.1", deny=["1.1.1.0/24"])


def test_denied_networks_are_collapsed_with_the_extra_ones():
    networks = policy.denied_networks(["10.1.0.0/16", "8.8.8.0/24"])
    assert ipaddress.ip_network("10.1.0.0/16") not in networks   # inside 10.0.0.0/8
    assert ipaddress.ip_network("8.8.8.0/24") in networks
    assert [n.version for n in networks] == sorted(n.version for n in networks)
