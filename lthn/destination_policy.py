"""Which destinations a client may reach through the node: global unicast addresses only.

The one source of truth for every part that filters destinations (issue #15): haproxy's
rules and squid's ACLs (services/proxy/) and the VPN's nftables egress filter
(services/vpn/egress.py) all take their ranges from here.

Refused by rule, not by luck of routing:
- every block the IANA special-purpose registries call not globally reachable, plus
  multicast: a superset of what Python's `ipaddress` calls not `is_global` (3.11 to 3.13);
  tests/test_destination_policy.py and tests/test_proxy_destinations.py check the table
  against it, so it can only be stricter than Python, never looser;
- every IPv6 form that carries an IPv4 address inside: IPv4-mapped and -compatible,
  IPv4-translated, 6to4 and Teredo entirely (deprecated or not global), and in the NAT64
  prefix 64:ff9b::/96 (global: it reaches any IPv4 address through a translator) the
  embedded form of every refused IPv4 range, so `[64:ff9b::a9fe:a9fe]` is refused like
  169.254.169.254;
- host names that cannot be names (a label over 63 characters, a name over 253).

Unassigned IPv6 space outside 2000::/3 is not listed: nothing routes there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NOT_GLOBAL_V4 = (
    "0.0.0.0/8",         # "this network"
    "10.0.0.0/8",        # private (RFC 1918)
    "100.64.0.0/10",     # shared address space (carrier-grade NAT)
    "127.0.0.0/8",       # loopback
    "169.254.0.0/16",    # link-local (cloud metadata services live here)
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
    "::ffff:0:0:0/96",   # IPv4-translated (SIIT): carries an IPv4 address
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
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")       # well-known NAT64 prefix (RFC 6052)
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

MAX_NAME = 253   # characters in a host name, without a trailing dot (RFC 1035)
MAX_LABEL = 63   # characters in one label


def nat64(network: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The IPv4 range as reached through the NAT64 prefix: 10.0.0.0/8 -> 64:ff9b::a00:0/104."""
    base = int(NAT64.network_address) | int(network.network_address)
    return ipaddress.IPv6Network((base, 96 + network.prefixlen))


def _collapse(networks: Iterable[Network]) -> list[Network]:
    items = list(networks)
    v4 = [n for n in items if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in items if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _without(networks: list[Network], hole: ipaddress.IPv6Network) -> list[Network]:
    out: list[Network] = []
    for n in networks:
        if n == hole:
            continue
        if isinstance(n, ipaddress.IPv6Network) and n.supernet_of(hole):
            out += n.address_exclude(hole)
        else:
            out.append(n)
    return out


def denied_networks(extra: Iterable[str] = (), *, ipv4_mapped: bool = True) -> list[Network]:
    """The not-global ranges plus `extra` (CIDR strings), each IPv4 one also in its NAT64
    form; collapsed (no range inside another: squid warns about those), IPv4 first.

    `ipv4_mapped=False` leaves out ::ffff:0:0/96, for haproxy and squid: both compare an
    IPv4 address as its IPv4-mapped IPv6 form, so listing that block would refuse every
    IPv4 destination. They read an IPv4-mapped literal as the IPv4 address it carries and
    check it against the IPv4 ranges instead.
    """
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for text in (*NOT_GLOBAL_V4, *NOT_GLOBAL_V6, *extra):
        network = ipaddress.ip_network(text, strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    networks = _collapse([*v4, *v6, *(nat64(n) for n in ipaddress.collapse_addresses(v4))])
    if not ipv4_mapped:
        networks = _without(networks, IPV4_MAPPED)
    return networks


def own_networks(addresses: Iterable[str]) -> list[Network]:
    """The node's own addresses as /32 and /128, with the NAT64 form of each IPv4 one."""
    out: list[Network] = []
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%")[0])
        out.append(ipaddress.ip_network(ip))
        if isinstance(ip, ipaddress.IPv4Address):
            out.append(nat64(ipaddress.IPv4Network(ip)))
    return sorted(set(out), key=lambda n: (n.version, n))


def allowed_networks(texts: Iterable[str]) -> list[Network]:
    """An operator's exceptions (CIDR strings), collapsed, IPv4 first."""
    return _collapse(ipaddress.ip_network(t, strict=False) for t in texts)


def is_allowed(address: str, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> bool:
    """May a client reach `address`? The decision the generated rules make: an exception
    wins, then the denied ranges refuse."""
    ip = ipaddress.ip_address(address)
    if any(ip in n for n in allowed_networks(allow)):
        return True
    return not any(ip in n for n in denied_networks(deny))


def host_name_problem(host: str) -> str | None:
    """Why `host` (without a trailing dot) cannot be a host name, or None: a name over 253
    characters or a label over 63 is refused at once, never looked up (issue #15)."""
    if len(host) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if any(len(label) > MAX_LABEL for label in host.split(".")):
        return f"a label is longer than {MAX_LABEL} characters"
    return None


def parse_port_ranges(items: Iterable[int | str]) -> list[tuple[int, int]]:
    """`[80, 443, "1025-65535"]` -> [(80, 80), (443, 443), (1025, 65535)], merged and
    sorted. Raises ValueError naming the item that is not a port or a LOW-HIGH range."""
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not a port or a LOW-HIGH range")
        if isinstance(item, int):
            low = high = item
        else:
            text = str(item).strip()
            low_text, sep, high_text = text.partition("-")
            if not low_text.strip().isdigit() or (sep and not high_text.strip().isdigit()):
                raise ValueError(f'"{item}" is not a port or a LOW-HIGH range')
            low = int(low_text)
            high = int(high_text) if sep else low
        if not 1 <= low <= high <= 65535:
            raise ValueError(f'"{item}" is not within 1-65535 (low to high)')
        ranges.append((low, high))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged
