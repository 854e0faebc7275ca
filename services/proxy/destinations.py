"""Which destinations a paying client may reach: the node config's policy, for haproxy and
squid. The ranges come from lthn/destination_policy.py (the VPN's egress filter uses the
same), so the two generated configs never disagree (issues #10, #15): haproxy refuses
before any name is looked up (IP literals, ports, host names that cannot be names),
squid again after name resolution (`dst`).

The node's own addresses are not in the static lists: each program keeps them in a file
of its own that follows the machine's addresses while it runs (services/proxy/
own_addresses.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from lthn import destination_policy as policy
from lthn.config import Config, parse_exception


@dataclass(frozen=True)
class Exception_:
    """An operator's explicit exception: a host name or a network, and one port."""
    host: str
    port: int
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None  # None: a host name

    @property
    def is_name(self) -> bool:
        return self.network is None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def exceptions(config: Config) -> list[Exception_]:
    out = []
    for text in config.proxy.allow_destinations:
        parsed = parse_exception(text)
        if parsed is None:  # the config check refuses these; never reached after load()
            continue
        host, port = parsed
        out.append(Exception_(host.lower(), port, _network(host)))
    return out


def denied_networks(config: Config) -> list[str]:
    """The policy's ranges and the operator's extra ones (CIDR), without a range inside
    another (squid warns about those) and without ::ffff:0:0/96 (see the policy)."""
    return [str(n) for n in policy.denied_networks(config.proxy.deny_networks,
                                                   ipv4_mapped=False)]


def own_address_lines(addresses: list[str]) -> str:
    """The file of the node's own addresses haproxy and squid read: one range a line."""
    return "".join(f"{n}\n" for n in policy.own_networks(addresses))


def own_addresses_path(config: Config, program: str) -> Path:
    """Each program keeps its own copy (written by its own runner, never by two)."""
    return config.state / "run" / f"{program}-own-addresses.acl"


# names that always mean this machine (RFC 6761), refused before any resolver is asked
BUILTIN_DENIED_DOMAINS = ("localhost",)


def denied_domains(config: Config) -> list[str]:
    """Denied domains (subdomains included), lower case, without leading or trailing dot."""
    return sorted({d.strip().lower().strip(".")
                   for d in (*BUILTIN_DENIED_DOMAINS, *config.proxy.deny_domains)
                   if d.strip(". ")})


def connect_ports(config: Config) -> list[int]:
    """Ports CONNECT may reach anywhere; an exception also opens its own port, to its host."""
    return sorted(set(config.proxy.connect_ports))


def http_ports(config: Config) -> list[tuple[int, int]]:
    """Port ranges plain HTTP may reach (`proxy.http_ports`, like squid's Safe_ports)."""
    return policy.parse_port_ranges(config.proxy.http_ports)
