"""Which destinations a paying client may reach: the node's policy, for haproxy and squid.

Both generated configs take their lists from here so they never disagree (issue #10):
squid enforces it after name resolution (`dst`), haproxy again on IP literals.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
from dataclasses import dataclass

from lthn.config import Config, parse_exception

log = logging.getLogger(__name__)

# never reachable through the proxy: the node itself and private networks (issue #10)
BUILTIN_DENIED = (
    "127.0.0.0/8", "::1/128",                        # loopback
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",                                 # carrier-grade NAT
    "169.254.0.0/16", "fe80::/10",                   # link-local
    "fc00::/7",                                      # unique-local
    "224.0.0.0/4", "ff00::/8",                       # multicast
    "0.0.0.0/8", "::/128",                           # unspecified / "this network"
    "240.0.0.0/4",                                   # reserved, and broadcast
)
# IPv4-mapped IPv6 (::ffff:a.b.c.d) is not listed: haproxy and squid both compare it as the
# IPv4 address it carries, and listing ::ffff:0:0/96 would match every IPv4 address.


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


def node_addresses() -> list[str]:
    """Every address configured on this machine's interfaces (`ip -j addr`), as /32 or /128.

    Read when the configs are rendered; an address added later is covered after a restart
    of haproxy and squid (and by the built-in ranges when it is private).
    """
    found: set[str] = set()
    try:
        result = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True,
                                timeout=5, check=True)
        for link in json.loads(result.stdout):
            for info in link.get("addr_info", []):
                address = info.get("local")
                if address:
                    found.add(address)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("destinations: cannot list interface addresses with `ip -j addr` (%s); "
                    "falling back to the host name's addresses", exc)
        try:
            for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
                found.add(str(sockaddr[0]))
        except OSError:
            pass
    out = []
    for address in sorted(found):
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            continue
        out.append(f"{ip}/{ip.max_prefixlen}")
    return out


def denied_networks(config: Config, own: list[str] | None = None) -> list[str]:
    """Built-in ranges, the node's own addresses and the operator's extra ranges (CIDR)."""
    own = node_addresses() if own is None else own
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in (*BUILTIN_DENIED, *own, *config.proxy.deny_networks):
        network = ipaddress.ip_network(text, strict=False)
        if network not in networks:
            networks.append(network)
    # squid warns about (and ignores) a range inside another: keep only the outer one
    return [str(n) for n in networks
            if not any(o != n and o.version == n.version and n.subnet_of(o)  # type: ignore[arg-type]
                       for o in networks)]


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
