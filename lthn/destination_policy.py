"""Which destinations a client may reach through the node: global unicast addresses only.

The ranges below are the IANA special-purpose registries' "not globally reachable" blocks,
plus multicast: everything Python's `ipaddress` calls not `is_global`, and a few blocks
newer Pythons know or that carry other addresses inside them (6to4 embeds any IPv4
address, so 2002::/16 could reach 10.0.0.0/8). tests/test_destination_policy.py checks the
table against `is_global`, so it can only be stricter than Python, never looser.

One module for every part that filters destinations: the VPN's nftables egress filter
(services/vpn/egress.py) today; the proxy keeps its own list in services/proxy/
destinations.py until it moves here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NOT_GLOBAL_V4 = (
    "0.0.0.0/8",         # "this network"
    "10.0.0.0/8",        # private (RFC 1918)
    "100.64.0.0/10",     # shared address space (carrier-grade NAT)
    "127.0.0.0/8",       # loopback
    "169.254.0.0/16",    # link-local
    "172.16.0.0/12",     # private (RFC 1918)
    "192.0.0.0/24",      # IETF protocol assignments
    "192.0.2.0/24",      # documentation (TEST-NET-1)
    "192.168.0.0/16",    # private (RFC 1918)
    "198.18.0.0/15",     # benchmarking
    "198.51.100.0/24",   # documentation (TEST-NET-2)
    "203.0.113.0/24",    # documentation (TEST-NET-3)
    "224.0.0.0/4",       # multicast
    "240.0.0.0/4",       # reserved, and the limited broadcast address
)
NOT_GLOBAL_V6 = (
    "::/96",             # unspecified, loopback, deprecated IPv4-compatible
    "::ffff:0:0/96",     # IPv4-mapped: never on the wire
    "64:ff9b:1::/48",    # local-use NAT64
    "100::/64",          # discard-only
    "2001::/23",         # IETF protocol assignments (Teredo, ORCHID, benchmarking, ...)
    "2001:db8::/32",     # documentation
    "2002::/16",         # 6to4: carries any IPv4 address, private ones included
    "3fff::/20",         # documentation (RFC 9637)
    "5f00::/16",         # segment routing SIDs
    "fc00::/7",          # unique-local
    "fe80::/10",         # link-local
    "fec0::/10",         # deprecated site-local
    "ff00::/8",          # multicast
)


def denied_networks(extra: Iterable[str] = ()) -> list[Network]:
    """The not-global ranges plus `extra` (CIDR strings), collapsed, IPv4 first."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for text in (*NOT_GLOBAL_V4, *NOT_GLOBAL_V6, *extra):
        network = ipaddress.ip_network(text, strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def allowed_networks(texts: Iterable[str]) -> list[Network]:
    """An operator's exceptions (CIDR strings), collapsed, IPv4 first."""
    networks = [ipaddress.ip_network(t, strict=False) for t in texts]
    return [*ipaddress.collapse_addresses(n for n in networks if n.version == 4),
            *ipaddress.collapse_addresses(n for n in networks if n.version == 6)]


def is_allowed(address: str, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> bool:
    """May a client reach `address`? The same decision the nftables filter makes: an
    exception wins, then the denied ranges refuse."""
    ip = ipaddress.ip_address(address)
    if any(ip in n for n in allowed_networks(allow)):
        return True
    return not any(ip in n for n in denied_networks(deny))
