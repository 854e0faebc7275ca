"""Client source addresses, as bans and the audit log take them (issue #19)."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceError(ValueError):
    """Not an IP address or network; the text says so."""


def canonical(text: str) -> str:
    """`203.0.113.7` -> itself, `203.0.113.7/24` -> `203.0.113.0/24`, `::1/128` -> `::1`."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise SourceError(f'"{text[:60]}" is not an IP address or network (CIDR)') from None
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def network_of(text: str, v4_prefix: int = 24, v6_prefix: int = 48) -> Network | None:
    """The /24 (IPv4) or /48 (IPv6) a source belongs to (or the wider network it is):
    `203.0.113.7:5123`, `[2001:db8::1]:443`, `203.0.113.7`, `203.0.113.0/24`; None when
    it is none of these."""
    raw = text.strip()
    if raw.startswith("["):
        raw = raw[1:].split("]", 1)[0]
    elif raw.count(":") == 1:
        raw = raw.split(":", 1)[0]
    try:
        network = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        return None
    keep = v4_prefix if network.version == 4 else v6_prefix
    if network.prefixlen <= keep:
        return network
    return network.supernet(new_prefix=keep)
