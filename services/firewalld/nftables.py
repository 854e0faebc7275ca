"""Bans at packet level, where nftables exists (issue #17): a table the node owns,
`inet lthn_fw_<id>` (one per state dir, so two nodes on one machine never touch each
other's), that drops packets from banned sources to the node's own ports
(proxy, and VPN once it exists) before any program sees them. Each set element carries
the ban's remaining time, so the kernel ends a ban on time by itself.

The table is made when firewalld starts (replacing a stale one), its sets are rewritten
whole in one `nft -f` transaction when bans change (at most every `MIN_INTERVAL`, so a
wave of bans costs one nft run, not one per ban), and it is deleted when firewalld stops.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

TABLE_PREFIX = "lthn_fw_"
NFT = "nft"
MIN_INTERVAL = 0.25


class NftablesUnavailable(OSError):
    """nft is missing or may not be used here; the text says why."""


def _run(script: str) -> None:
    try:
        result = subprocess.run([NFT, "-f", "-"], input=script, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NftablesUnavailable(f"nft: {exc}") from None
    if result.returncode != 0:
        raise NftablesUnavailable(f"nft: {result.stderr.strip().splitlines()[-1:] or '?'}")


def table_name(state_dir: str) -> str:
    """The node's own table: `lthn_fw_` and 8 hex digits of its state dir."""
    return TABLE_PREFIX + hashlib.sha256(state_dir.encode()).hexdigest()[:8]


def table_script(table: str, ports: list[int]) -> str:
    port_set = ", ".join(str(p) for p in sorted(set(ports)))
    return (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  set banned4 { type ipv4_addr; flags interval, timeout; }\n"
        "  set banned6 { type ipv6_addr; flags interval, timeout; }\n"
        "  chain input {\n"
        "    type filter hook input priority -5; policy accept;\n"
        f"    tcp dport {{ {port_set} }} ip saddr @banned4 drop\n"
        f"    tcp dport {{ {port_set} }} ip6 saddr @banned6 drop\n"
        f"    udp dport {{ {port_set} }} ip saddr @banned4 drop\n"
        f"    udp dport {{ {port_set} }} ip6 saddr @banned6 drop\n"
        "  }\n"
        "}\n")


def sets_script(table: str, bans: Mapping[str, float], now: float) -> str:
    """Both sets, flushed and filled in one transaction, each element with its time left."""
    elements: dict[int, list[str]] = {4: [], 6: []}
    for ip, expires in sorted(bans.items()):
        left = math.ceil(expires - now)
        if left <= 0:
            continue
        network = ipaddress.ip_network(ip, strict=False)
        elements[network.version].append(f"{ip} timeout {left}s")
    lines = [f"flush set inet {table} banned4", f"flush set inet {table} banned6"]
    for version, name in ((4, "banned4"), (6, "banned6")):
        if elements[version]:
            # collapse overlapping ranges: an interval set refuses overlaps
            lines.append(f"add element inet {table} {name} {{ "
                         + ", ".join(_without_overlaps(elements[version])) + " }")
    return "\n".join(lines) + "\n"


def delta_script(table: str, applied: Mapping[str, float], bans: Mapping[str, float],
                 now: float) -> str | None:
    """Only what changed since `applied`: elements deleted (lifted or extended) and added
    (new or extended), so a wave of bans costs the new elements, not the whole set. None
    when a range is involved (overlaps are resolved only by a whole rewrite)."""
    changed = {ip: e for ip, e in bans.items() if applied.get(ip) != e and e > now}
    gone = [ip for ip, e in applied.items() if e > now and (ip not in bans or ip in changed)]
    if any("/" in ip for ip in (*changed, *gone)):
        return None
    lines = []
    for version, name in ((4, "banned4"), (6, "banned6")):
        drop = [ip for ip in gone if ipaddress.ip_address(ip).version == version]
        add = [f"{ip} timeout {math.ceil(e - now)}s" for ip, e in sorted(changed.items())
               if ipaddress.ip_address(ip).version == version]
        if drop:
            lines.append(f"delete element inet {table} {name} {{ {', '.join(drop)} }}")
        if add:
            lines.append(f"add element inet {table} {name} {{ {', '.join(add)} }}")
    return "\n".join(lines) + "\n" if lines else ""


def _without_overlaps(elements: list[str]) -> list[str]:
    kept: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for element in sorted(elements, key=lambda e: ipaddress.ip_network(
            e.split()[0], strict=False).prefixlen):
        network = ipaddress.ip_network(element.split()[0], strict=False)
        if not any(network.subnet_of(k) for k, _ in kept):  # type: ignore[arg-type]
            kept.append((network, element))
    return [e for _, e in kept]


class NftablesBans:
    """The packet-level copy of the bans; `apply()` when they changed (rate-limited)."""

    def __init__(self, table: str, ports: list[int],
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.ports = ports
        self.clock = clock
        self.pending = False
        self.last = 0.0
        self.active = False
        self.applied: dict[str, float] = {}   # what the kernel's sets hold (expiry each)

    @staticmethod
    def usable() -> str | None:
        """None when nft can be used here, else why not."""
        if shutil.which(NFT) is None:
            return "nft is not installed"
        try:
            result = subprocess.run([NFT, "list", "tables"], capture_output=True, text=True,
                                    timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"nft: {exc}"
        if result.returncode != 0:
            return "nft: " + (result.stderr.strip().splitlines() or ["failed"])[-1]
        return None

    def start(self, bans: Mapping[str, float]) -> None:
        _run(table_script(self.table, self.ports))
        self.active = True
        _run(sets_script(self.table, bans, self.clock()))
        self.applied = dict(bans)
        log.info("nftables: table inet %s made (ports %s, %d bans)", self.table,
                 ",".join(map(str, self.ports)), len(bans))

    def changed(self) -> None:
        self.pending = True

    def apply(self, bans: Mapping[str, float], monotonic: float) -> None:
        if not self.active or not self.pending or monotonic - self.last < MIN_INTERVAL:
            return
        self.pending = False
        self.last = monotonic
        now = self.clock()
        delta = delta_script(self.table, self.applied, bans, now)
        try:
            if delta:
                try:
                    _run(delta)
                except NftablesUnavailable:
                    delta = None      # the sets were not what we thought: rewrite them
            if delta is None:
                _run(sets_script(self.table, bans, now))
            self.applied = dict(bans)
        except NftablesUnavailable as exc:
            self.pending = True
            log.warning("nftables: bans not applied (%s); retrying", exc)

    def stop(self) -> None:
        if not self.active:
            return
        try:
            _run(f"table inet {self.table} {{}}\ndelete table inet {self.table}\n")
            log.info("nftables: table inet %s removed", self.table)
        except NftablesUnavailable as exc:
            log.warning("nftables: cannot remove table inet %s: %s", self.table, exc)
        self.active = False
