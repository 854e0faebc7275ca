"""The bans in force, as lthn-vpnd checks a login's source against them (issue #18).

Bans are firewalld's ledger rows (an address or a network each, with an expiry); vpnd
keeps them in memory, reloaded from the ledger at start, on every `ban.added` /
`ban.lifted` and every RELOAD_SECONDS, so a login is checked without a query and a
network ban covers every address in it. The ledger decides, not the message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from lthn.ledger import BanRow

RELOAD_SECONDS = 10.0


class Bans:
    def __init__(self) -> None:
        self.rows: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, BanRow]] = []

    def load(self, rows: Iterable[BanRow]) -> None:
        loaded = []
        for row in rows:
            try:
                loaded.append((ipaddress.ip_network(row.ip, strict=False), row))
            except ValueError:
                continue   # firewalld stores canonical sources only (lthn/sources.py)
        self.rows = loaded

    def reason_for(self, source: str, now: float) -> str | None:
        """Why `source` is banned at `now`, or None."""
        try:
            ip = ipaddress.ip_address(source)
        except ValueError:
            return None
        for network, row in self.rows:
            if row.expires > now and ip in network:
                return row.reason
        return None
