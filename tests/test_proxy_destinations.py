"""lthn/destination_policy.py, the one destination policy (issue #15), and what the proxy
makes of it: the table covers everything Python's `ipaddress` calls not global (so it can
only be stricter), every IPv6 form carrying a refused IPv4 address, the node's own
addresses, host names that cannot be names, port ranges; the config refuses exceptions
written as URLs."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lthn import destination_policy as policy
from lthn.config import parse
from lthn.schema import ConfigError
from services.proxy import destinations

DENIED = policy.denied_networks()
PROXY_DENIED = policy.denied_networks(ipv4_mapped=False)


def denied(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, table=DENIED) -> bool:
    return any(ip in n for n in table)


def refused_by_proxy(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """As haproxy and squid decide: an IPv4-mapped address is checked as its IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return denied(ip.ipv4_mapped, PROXY_DENIED)
    return denied(ip, PROXY_DENIED)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv4_address_python_calls_not_global_is_refused(value):
    ip = ipaddress.IPv4Address(value)
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        assert denied(ip) and refused_by_proxy(ip), ip


def _near_blocks() -> st.SearchStrategy[ipaddress.IPv6Address]:
    """IPv6 addresses in, at the edges of and just outside every listed block (random
    128-bit addresses would almost never land in one)."""
    edges = []
    for text in (*policy.NOT_GLOBAL_V6, "64:ff9b::/96", "2001:db8::/32", "2001:10::/28"):
        n = ipaddress.IPv6Network(text)
        edges += [int(n.network_address), int(n.broadcast_address)]
    return st.builds(lambda b, d: ipaddress.IPv6Address(max(0, min(2**128 - 1, b + d))),
                     st.sampled_from(edges), st.integers(min_value=-(2**20), max_value=2**20))


@given(st.one_of(_near_blocks(), st.integers(min_value=0, max_value=2**128 - 1).map(
    ipaddress.IPv6Address)))
def test_every_ipv6_address_python_calls_not_global_is_refused(ip):
    if not ip.is_global or ip.is_multicast:
        assert denied(ip) and refused_by_proxy(ip), ip


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_an_ipv6_form_carrying_a_refused_ipv4_address_is_refused(value):
    """NAT64 (64:ff9b::/96) is global, but not toward a refused IPv4 address; mapped,
    compatible, translated, 6to4 and Teredo forms are refused whatever they carry."""
    v4 = ipaddress.IPv4Address(value)
    carriers = [ipaddress.IPv6Address(f"::ffff:{v4}"), ipaddress.IPv6Address(f"::{v4}"),
                ipaddress.IPv6Address(f"::ffff:0:{v4}"),
                ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),
                ipaddress.IPv6Address((0x20010000 << 96) | (value ^ 0xFFFFFFFF))]
    for ip in carriers:
        if ip.ipv4_mapped is None:
            assert denied(ip) and refused_by_proxy(ip), ip
    nat64 = ipaddress.IPv6Address(int(policy.NAT64.network_address) | value)
    assert denied(nat64) == refused_by_proxy(nat64) == denied(v4), (v4, nat64)


@pytest.mark.parametrize("address", [
    "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "::ffff:a9fe:a9fe", "2002:a00:1::1", "2001::1",
    "2001:db8::1", "100::1", "fec0::1", "198.18.0.1", "192.0.2.1", "198.51.100.1",
    "203.0.113.1", "240.0.0.1", "255.255.255.255", "100.64.0.1", "192.0.0.9", "3fff::1"])
def test_the_issues_examples_are_refused(address):
    assert not policy.is_allowed(address)


@pytest.mark.parametrize("address", ["1.1.1.1", "192.88.99.7", "2606:4700::1111",
                                     "64:ff9b::101:101", "::ffff:1.1.1.1"])
def test_global_destinations_pass(address):
    ip = ipaddress.ip_address(address)
    assert refused_by_proxy(ip) is False
    if ip.version == 4 or ip.ipv4_mapped is None:
        assert policy.is_allowed(address)


def test_exceptions_win_and_extra_ranges_add_in_both_forms():
    assert policy.is_allowed("10.97.0.2", allow=["10.97.0.2/32"])
    assert not policy.is_allowed("10.97.0.3", allow=["10.97.0.2/32"])
    assert not policy.is_allowed("1.1.1.1", deny=["1.1.1.0/24"])
    assert not policy.is_allowed("64:ff9b::101:101", deny=["1.1.1.0/24"])


def test_the_proxys_table_never_lists_the_ipv4_mapped_block():
    """haproxy and squid compare IPv4 addresses as ::ffff:a.b.c.d: that block (or one
    holding it) would refuse every IPv4 destination."""
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    assert mapped in DENIED
    table = policy.denied_networks(["::/64"], ipv4_mapped=False)
    assert not any(n.version == 6 and n.overlaps(mapped) for n in table)
    # the rest of ::/64 is still there
    assert denied(ipaddress.IPv6Address("::fffe:0:1"), table)


def test_no_range_holds_another():
    """squid warns about (and ignores) a range inside another of the same ACL."""
    for table in (DENIED, PROXY_DENIED, policy.denied_networks(["127.0.0.5/32", "10.1.0.0/16"])):
        for a in table:
            assert not any(a != b and a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
                           for b in table), a


def test_own_addresses_with_their_nat64_form():
    assert [str(n) for n in policy.own_networks(["192.0.2.2", "fe80::1%eth0", "fd00::2"])] \
        == ["192.0.2.2/32", "64:ff9b::c000:202/128", "fd00::2/128", "fe80::1/128"]
    assert destinations.own_address_lines(["127.0.0.1"]) == "127.0.0.1/32\n64:ff9b::7f00:1/128\n"


@pytest.mark.parametrize("host,problem", [
    ("a" * 63 + ".example", None), ("a" * 64 + ".example", "label"),
    (("a" * 62 + ".") * 4 + "e", None), (("a" * 62 + ".") * 4 + "ex", "longer than 253"),
    ("2001:db8::1", None)])
def test_host_names_that_cannot_be_names(host, problem):
    found = policy.host_name_problem(host)
    assert (found is None) if problem is None else (problem in found), (host, found)


def test_port_ranges():
    assert policy.parse_port_ranges([80, 443, "1025-65535"]) == [(80, 80), (443, 443),
                                                                (1025, 65535)]
    assert policy.parse_port_ranges(["8000-8100", 8050, 8101]) == [(8000, 8101)]
    for bad in (["80-"], ["x"], [0], ["100-90"], [True], ["1-70000"]):
        with pytest.raises(ValueError):
            policy.parse_port_ranges(bad)


def _config(**proxy):
    return parse({"provider": {"id": "ab" * 32}, "state_dir": "/tmp/x", "proxy": proxy},
                 "node.yaml")


def test_config_http_ports_default_and_mistakes():
    assert destinations.http_ports(_config()) == [(80, 80), (443, 443), (1025, 65535)]
    assert destinations.http_ports(_config(http_ports=[80, "8000-8080"])) == [
        (80, 80), (8000, 8080)]
    with pytest.raises(ConfigError) as err:
        _config(http_ports=[80, "8080-80"])
    assert str(err.value).startswith("node.yaml: proxy.http_ports: must hold ports or LOW-HIGH "
                                      'ranges: "8080-80" is not within 1-65535')


def test_config_refuses_an_exception_written_as_a_url():
    """It passed the check before and then matched nothing."""
    with pytest.raises(ConfigError) as err:
        _config(allow_destinations=["http://127.0.0.1:18100"])
    assert str(err.value) == (
        'node.yaml: proxy.allow_destinations: "http://127.0.0.1:18100" is a URL; write '
        'HOST:PORT or CIDR:PORT, like "127.0.0.1:18100" (got a list)')
    for bad in ("127.0.0.1:18100/path", "a b:80", "-x.test:80"):
        with pytest.raises(ConfigError):
            _config(allow_destinations=[bad])
    ok = _config(allow_destinations=["127.0.0.1:8080", "[::1]:80", "origin.test:443",
                                     "10.1.0.0/16:80"])
    assert [(e.host, e.port) for e in destinations.exceptions(ok)] == [
        ("127.0.0.1", 8080), ("::1", 80), ("origin.test", 443), ("10.1.0.0/16", 80)]
