"""Bans by hand (`lthnctl ban add|del`), stored in the ledger and published on the bus
(issue #19). firewalld owns bans: it answers `ban.add` and `ban.lift`, and publishes
`ban.lifted` when a ban runs out. Enforcing them (haproxy, OpenVPN, nftables) and banning
by refusal counts is issue #17; it reads the same rows and messages.

Each change is one ledger transaction: the ban row, its audit line and its bus message.
"""

from __future__ import annotations

import logging

from lthn import sources
from lthn.control import Asked, Refused
from lthn.ledger import Ledger
from lthn.messages import BanAdded, BanLifted
from lthn.requests import AddBan, BanChanged, LiftBan

log = logging.getLogger(__name__)

ACTOR = "firewalld"
MAX_SECONDS = 10 * 365 * 86400


def canonical_source(text: str) -> str:
    try:
        return sources.canonical(text)
    except sources.SourceError as exc:
        raise Refused(str(exc)) from None


class ManualBans:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.swept = ledger.clock()   # expiries before this were someone else's to report
        self.lifted: set[str] = set()  # lifted by hand since the last sweep (reported)

    def add(self, req: AddBan, asked: Asked) -> BanChanged:
        source = canonical_source(req.address)
        if not 0 < req.seconds <= MAX_SECONDS:
            raise Refused(f"a ban lasts more than 0 s and at most {MAX_SECONDS} s "
                          f"(got {req.seconds:g})")
        with self.ledger.transaction() as tx:
            row = tx.add_ban(source, req.reason, tx.now + req.seconds)
            tx.audit(asked.actor, "banned", "", source=source, reason=req.reason,
                     seconds=req.seconds, expires=row.expires)
            tx.emit(BanAdded(source=source, reason=req.reason, expires=row.expires,
                             count=row.count))
        self.lifted.discard(source)
        log.info("source %s: banned until %.0f by %s (%s)", source, row.expires, asked.actor,
                 req.reason)
        return BanChanged(address=source, reason=req.reason, expires=row.expires,
                          changed=True)

    def lift(self, req: LiftBan, asked: Asked) -> BanChanged:
        source = canonical_source(req.address)
        with self.ledger.transaction() as tx:
            row = tx.lift_ban(source)
            if row is not None:
                tx.audit(asked.actor, "unbanned", "", source=source, reason=req.reason)
                tx.emit(BanLifted(source=source, reason=req.reason))
        if row is None:
            return BanChanged(address=source, reason="", expires=0.0, changed=False)
        self.lifted.add(source)
        log.info("source %s: ban lifted by %s (%s)", source, asked.actor, req.reason)
        return BanChanged(address=source, reason=req.reason, expires=0.0, changed=True)

    def sweep(self) -> None:
        """Publish `ban.lifted` once for every ban that ran out since the last sweep."""
        now = self.ledger.clock()
        expired = [b for b in self.ledger.bans_ended(self.swept, now)
                   if b.ip not in self.lifted]
        if expired:
            with self.ledger.transaction() as tx:
                for ban in expired:
                    tx.audit(ACTOR, "ban expired", "", source=ban.ip, reason=ban.reason)
                    tx.emit(BanLifted(source=ban.ip, reason="expired"))
            for ban in expired:
                log.info("source %s: ban expired (%s)", ban.ip, ban.reason)
        self.swept = now
        self.lifted.clear()
