"""The nftables table the node owns for VPN mode (issue #18): forwarding, NAT, egress filter.

An exit node forwards: clients route everything into the tunnel, and the node sends it
out of its outside interface with the outside address (masquerade). What VPN clients may
not reach is decided in the same table:

- the node itself (any of its addresses; `input` from the tun device), except DNS on the
  addresses pushed as the clients' DNS servers;
- destinations that are not global (lthn/destination_policy.py) or in `vpn.deny_networks`,
  unless in `vpn.allow_networks`; any interface but the outside one (so no client reaches
  another client, or a network behind another interface);
- nobody outside may open a connection to a client.

Forwarding is switched on (per network namespace, as OpenVPN's server runs in) when the
table is set up. If it was off before, the table also drops every forwarded packet that
is not the tunnel's, so turning it on opens nothing else; the value found is kept in
`run/vpn-forwarding.json` and put back when the table goes. Set up by lthn-openvpn before
OpenVPN starts, removed when it stops (a SIGKILL leaves the table, filtering, in place;
the next start replaces it in one nft transaction).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lthn import destination_policy
from lthn.config import Config

log = logging.getLogger(__name__)

TABLE = "lthn_vpn"
FAMILY = "inet"
SYSCTLS = {4: Path("/proc/sys/net/ipv4/ip_forward"),
           6: Path("/proc/sys/net/ipv6/conf/all/forwarding")}


class EgressError(RuntimeError):
    """nft or the kernel refused; the text says which and why."""


@dataclass(frozen=True)
class Plan:
    """What the table says, from the node config and what was found on the machine."""
    device: str
    outside: str
    pool4: str
    pool6: str
    dns: tuple[str, ...]
    allowed: tuple[destination_policy.Network, ...]
    denied: tuple[destination_policy.Network, ...]
    tunnel_only: tuple[int, ...]   # IP versions whose forwarding was off before us


def plan_for(config: Config, outside: str, tunnel_only: tuple[int, ...]) -> Plan:
    vpn = config.vpn
    return Plan(
        device=vpn.device, outside=outside, pool4=vpn.network, pool6=vpn.network6,
        dns=tuple(vpn.dns),
        allowed=tuple(destination_policy.allowed_networks(vpn.allow_networks)),
        denied=tuple(destination_policy.denied_networks(vpn.deny_networks)),
        tunnel_only=tunnel_only)


def _set(name: str, kind: str, networks: list[destination_policy.Network]) -> list[str]:
    lines = [f"    set {name} {{", f"        type {kind}", "        flags interval"]
    if networks:
        lines.append("        elements = { " + ", ".join(str(n) for n in networks) + " }")
    return lines + ["    }"]


def render(plan: Plan) -> str:
    """The table, as one `nft -f` script that replaces any older copy atomically."""
    dev, out = f'"{plan.device}"', f'"{plan.outside}"'
    by_version = {v: [n for n in plan.denied if n.version == v] for v in (4, 6)}
    allowed = {v: [n for n in plan.allowed if n.version == v] for v in (4, 6)}
    dns4 = [a for a in plan.dns if ipaddress.ip_address(a).version == 4]
    dns6 = [a for a in plan.dns if ipaddress.ip_address(a).version == 6]
    lines = [
        f"table {FAMILY} {TABLE}",          # create it if missing, so the delete succeeds
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        *_set("denied4", "ipv4_addr", by_version[4]),
        *_set("denied6", "ipv6_addr", by_version[6]),
        *_set("allowed4", "ipv4_addr", allowed[4]),
        *_set("allowed6", "ipv6_addr", allowed[6]),
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        f"        iifname {dev} ct state established,related accept",
    ]
    for version, addresses in ((4, dns4), (6, dns6)):
        if addresses:
            match = ("ip" if version == 4 else "ip6") + " daddr { " + ", ".join(addresses) + " }"
            lines.append(f"        iifname {dev} {match} meta l4proto {{ tcp, udp }} "
                         "th dport 53 accept")
    lines += [
        f'        iifname {dev} counter drop comment "VPN clients may not reach the node"',
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        f"        iifname {dev} oifname != {out} counter drop comment "
        '"clients leave by the outside interface only"',
        f"        iifname {dev} ip daddr @allowed4 accept",
        f"        iifname {dev} ip6 daddr @allowed6 accept",
        f'        iifname {dev} ip daddr @denied4 counter drop comment "not a global address"',
        f'        iifname {dev} ip6 daddr @denied6 counter drop comment "not a global address"',
        f"        iifname {dev} accept",
        f"        oifname {dev} ct state established,related accept",
        f'        oifname {dev} counter drop comment "nobody opens connections to clients"',
    ]
    for version in plan.tunnel_only:
        family = "ipv4" if version == 4 else "ipv6"
        lines.append(f"        meta nfproto {family} counter drop comment "
                     '"forwarding was off: it is on for the VPN only"')
    lines += [
        "    }",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        f"        oifname {out} ip saddr {plan.pool4} masquerade",
    ]
    if plan.pool6:
        lines.append(f"        oifname {out} ip6 saddr {plan.pool6} masquerade")
    lines += ["    }", "}", ""]
    return "\n".join(lines)


def _nft(script: str | None, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], input=script, capture_output=True, text=True,
                              timeout=30, check=False)
    except OSError as exc:
        raise EgressError(f"cannot run nft: {exc.strerror or exc}") from exc


def present() -> bool:
    """Is the node's table loaded (in this network namespace)?"""
    return _nft(None, "list", "table", FAMILY, TABLE).returncode == 0


def default_interface() -> str | None:
    """The interface of the IPv4 default route, or None when there is none."""
    try:
        result = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True,
                                text=True, timeout=10, check=True)
        routes = json.loads(result.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    for route in routes:
        if route.get("dev"):
            return str(route["dev"])
    return None


def _record_path(config: Config) -> Path:
    return config.state / "run" / "vpn-forwarding.json"


def _read_sysctl(version: int) -> str | None:
    try:
        return SYSCTLS[version].read_text().strip()
    except OSError:
        return None   # no IPv6 in this kernel or namespace


def _write_sysctl(version: int, value: str) -> None:
    try:
        SYSCTLS[version].write_text(value + "\n")
    except OSError as exc:
        raise EgressError(f"cannot set {SYSCTLS[version]} to {value}: "
                          f"{exc.strerror or exc}") from exc


def setup(config: Config, outside: str) -> Plan:
    """Forwarding on, the table loaded. Raises EgressError (nothing half-done is left on:
    a table nft refused is not loaded at all)."""
    record = _record_path(config)
    versions = (4, 6) if config.vpn.network6 else (4,)
    try:
        found = json.loads(record.read_text())   # left by a run that did not tear down
    except (OSError, ValueError):
        found = {str(v): _read_sysctl(v) for v in versions}
        record.write_text(json.dumps(found))
    plan = plan_for(config, outside, tuple(v for v in versions if found.get(str(v)) == "0"))
    result = _nft(render(plan), "-f", "-")
    if result.returncode != 0:
        raise EgressError(f"nft refused the {FAMILY} {TABLE} table: {result.stderr.strip()}")
    for version in versions:
        _write_sysctl(version, "1")
    log.info("egress: table %s %s loaded; forwarding %s -> %s with masquerade%s",
             FAMILY, TABLE, plan.device, plan.outside,
             " (forwarding on for the VPN only)" if plan.tunnel_only else "")
    return plan


def teardown(config: Config) -> None:
    """Table removed, forwarding put back as it was found. Never raises: it runs on the way
    out and says what it could not undo."""
    try:
        result = _nft(None, "delete", "table", FAMILY, TABLE)
        if result.returncode != 0 and "No such file" not in result.stderr:
            log.error("egress: cannot remove table %s %s: %s", FAMILY, TABLE,
                      result.stderr.strip())
    except EgressError as exc:
        log.error("egress: %s", exc)
    record = _record_path(config)
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError):
        found = {}
    for version, value in found.items():
        if value in ("0", "1"):
            try:
                _write_sysctl(int(version), value)
            except EgressError as exc:
                log.error("egress: %s", exc)
    record.unlink(missing_ok=True)
    log.info("egress: table %s %s removed, forwarding as found", FAMILY, TABLE)

