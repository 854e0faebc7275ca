"""The ban manager (issue #17): every ban of the node is a ticket here, with its time and
its count, like fail2ban's. It owns the ledger rows (`bans`: they survive restarts), the
bus messages (`ban.added`, `ban.lifted`) and the actions that enforce a ban: haproxy's
runtime map (always) and nftables (where it is used).

A ban is enforced at haproxy first, then written (one transaction for every ban decided
in one turn: its row, its audit line, its message), so a wave of offenders costs one
fsync, not one each. A ban that haproxy holds but the ledger lost (firewalld killed in
between) is dropped by the next resync: haproxy's counters still hold the offences, so the
source is banned again on its next poll.

Bans added elsewhere (lthnctl writes the ledger and queues `ban.added`; later, other nodes
sharing the ledger) are picked up from the ledger: at once on `ban.added`, and by a reread
every few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lthn.config import Firewall
from lthn.ledger import BanRow, Ledger
from lthn.messages import BanAdded, BanLifted
from lthn.source_policy import SourcePolicy
from services.firewalld.ban_rules import next_term
from services.firewalld.haproxy_firewall import HaproxyFirewall
from services.firewalld.nftables import NftablesBans

log = logging.getLogger(__name__)

ACTOR = "firewalld"


@dataclass(frozen=True)
class Offence:
    """Why a source is to be banned: `count` refusals of `reason` in `window` seconds."""
    source: str
    reason: str
    count: int
    window: float

    @property
    def text(self) -> str:
        return f"{self.count} {self.reason} in {self.window:g} s"


class BanManager:
    def __init__(self, ledger: Ledger, settings: Firewall, haproxy: HaproxyFirewall,
                 nftables: NftablesBans | None,
                 policy: Callable[[], SourcePolicy],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self.settings = settings
        self.haproxy = haproxy
        self.nftables = nftables
        self.policy = policy
        self.monotonic = monotonic
        self.book: dict[str, BanRow] = {}     # bans in force, by address or network

    def expiries(self) -> dict[str, float]:
        return {ip: row.expires for ip, row in self.book.items()}

    def banned(self, source: str) -> bool:
        row = self.book.get(source)
        return row is not None and row.expires > self.ledger.clock()

    # --- from the ledger ---
    def load(self) -> None:
        """Every ban in force, from the ledger (start, and resync)."""
        rows = {row.ip: row for row in self.ledger.bans()}
        for ip in set(self.book) - set(rows):
            self.haproxy.unban(ip)
        for ip, row in rows.items():
            old = self.book.get(ip)
            if old is None or old.expires != row.expires:
                self.haproxy.ban(ip, row.expires)
                if old is None:
                    log.info("source %s: banned until %s (ban #%d: %s), from the ledger",
                             ip, _clock(row.expires), row.count, row.reason)
        if set(rows) != set(self.book) or any(
                self.book[ip].expires != row.expires for ip, row in rows.items()
                if ip in self.book):
            self._nft_changed()
        self.book = rows

    # --- automatic bans ---
    def ban_offenders(self, offences: list[Offence]) -> list[BanRow]:
        """Ban every source in `offences` not already banned nor exempt; returns the rows."""
        policy = self.policy()
        now = self.ledger.clock()
        chosen: dict[str, tuple[Offence, int, float]] = {}
        for offence in offences:
            if offence.source in chosen or self.banned(offence.source):
                continue
            if not policy.may_ban(offence.source):
                continue
            term = next_term(self.settings, self.ledger.ban(offence.source), now)
            chosen[offence.source] = (offence, term.count, now + term.seconds)
        if not chosen:
            return []
        # enforced at haproxy at once; the ledger follows in one transaction below
        self.haproxy.ban_many({s: expires for s, (_, _, expires) in chosen.items()},
                              forget=True)
        rows = []
        with self.ledger.transaction() as tx:
            for source, (offence, count, expires) in chosen.items():
                reason = f"automatic: {offence.text}"
                row = tx.add_ban(source, reason, expires, count)
                tx.audit(ACTOR, "banned", "", source=source, reason=reason, count=count,
                         seconds=round(expires - tx.now, 3), expires=row.expires)
                tx.emit(BanAdded(source=source, reason=reason, expires=row.expires,
                                 count=row.count))
                rows.append(row)
        for row in rows:
            self.book[row.ip] = row
            log.warning("source %s: banned for %s (ban #%d): %s", row.ip,
                        _duration(row.expires - now), row.count, row.reason)
        self._nft_changed()
        return rows

    # --- by hand ---
    def add(self, source: str, seconds: float, reason: str, actor: str) -> BanRow:
        """A ban by the operator: `seconds` long, counted like any other."""
        with self.ledger.transaction() as tx:
            previous = tx.ban(source)
            count = next_term(self.settings, previous, tx.now).count
            row = tx.add_ban(source, reason, tx.now + seconds, count)
            tx.audit(actor, "banned", "", source=source, reason=reason, count=count,
                     seconds=seconds, expires=row.expires)
            tx.emit(BanAdded(source=source, reason=reason, expires=row.expires,
                             count=row.count))
        self._enforce(row)
        log.warning("source %s: banned until %s by %s (ban #%d): %s", source,
                    _clock(row.expires), actor, row.count, reason)
        return row

    def lift(self, source: str, reason: str, actor: str) -> BanRow | None:
        with self.ledger.transaction() as tx:
            row = tx.lift_ban(source)
            if row is not None:
                tx.audit(actor, "unbanned", "", source=source, reason=reason)
                tx.emit(BanLifted(source=source, reason=reason))
        self._release(source)
        if row is not None:
            log.info("source %s: ban lifted by %s (%s)", source, actor, reason)
        return row

    # --- time ---
    def sweep(self) -> None:
        """Bans that ran out: out of haproxy and nftables, one `ban.lifted` each."""
        now = self.ledger.clock()
        if not self.book or now < min(row.expires for row in self.book.values()):
            return
        ended = [row for row in self.book.values() if row.expires <= now]
        with self.ledger.transaction() as tx:
            for row in ended:
                current = tx.ban(row.ip)
                if current is not None and current.expires > now:
                    continue     # extended meanwhile (another writer): not ended
                tx.audit(ACTOR, "ban expired", "", source=row.ip, reason=row.reason)
                tx.emit(BanLifted(source=row.ip, reason="expired"))
        for row in ended:
            self._release(row.ip)
            log.info("source %s: ban expired (ban #%d: %s)", row.ip, row.count, row.reason)
        self.load()   # what the ledger says now (an extended ban comes back)

    def _enforce(self, row: BanRow) -> None:
        self.book[row.ip] = row
        self.haproxy.ban(row.ip, row.expires)
        self._nft_changed()

    def _release(self, source: str) -> None:
        self.book.pop(source, None)
        self.haproxy.unban(source)
        self._nft_changed()

    def _nft_changed(self) -> None:
        if self.nftables is not None:
            self.nftables.changed()

    def apply_nftables(self) -> None:
        if self.nftables is not None:
            self.nftables.apply(self.expiries(), self.monotonic())


def _clock(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
