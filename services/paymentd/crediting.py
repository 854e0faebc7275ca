"""Turns one wallet poll into ledger changes, exactly once. Pure: no sockets.

`Crediting.apply` runs inside one ledger transaction: new (txid, authid) pairs are
inserted (UNIQUE, so a replay is a no-op) and credited, known ones get their
confirmations updated, payments that vanished are revoked unless already spendable, and
the scan height is stored, all with audit lines and outbox messages, so a crash at any
point either keeps all of one poll or none of it (issue #3).

Payment states: `pool` (0 confirmations), `in` (mined), `revoked` (credit taken back),
`vanished` (left the wallet after it became spendable; the credit stays).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from lthn import access, credit_rules
from lthn.authid import AuthidError, parse_authid, service_of, short
from lthn.config import Config, Service
from lthn.credit_rules import Rules
from lthn.ledger import Ledger, PaymentRow, Tx
from lthn.messages import PaymentConfirmed, PaymentCredited, PaymentRejected, PaymentRevoked
from services.paymentd.wallet_rpc import Transfer

log = logging.getLogger(__name__)

ACTOR = "paymentd"
SCAN_HEIGHT_KEY = "paymentd.scan_height"
# blocks re-read below the scan height on every poll, so a short reorg that brings in a
# transfer at a height already scanned is still seen (replays are no-ops)
REORG_MARGIN = 10
# confirmations are followed (and published) at least up to Monero's unlock depth
MIN_WATCH_CONFIRMATIONS = 10


@dataclass
class Outcome:
    """What one poll changed; `lines` are log lines to write once the poll is committed."""
    credited: int = 0
    confirmed: int = 0
    revoked: int = 0
    rejected: int = 0
    lines: list[tuple[int, str, tuple]] = field(default_factory=list)

    def note(self, level: int, fmt: str, *args: object) -> None:
        self.lines.append((level, fmt, args))

    def log(self, logger: logging.Logger = log) -> None:
        for level, fmt, args in self.lines:
            logger.log(level, fmt, *args)


def merge(transfers: Iterable[Transfer]) -> dict[tuple[str, str], Transfer]:
    """One transfer per (txid, payment id): amounts to several subaddresses add up; a
    mined listing wins over a pool listing of the same tx (the pool list can lag)."""
    parts: dict[tuple[str, str, bool], dict[tuple[int, int], Transfer]] = {}
    for t in transfers:
        parts.setdefault((t.txid, t.payment_id, t.in_pool), {})[t.subaddr] = t
    out: dict[tuple[str, str], Transfer] = {}
    for (txid, payment_id, in_pool), by_subaddr in parts.items():
        if in_pool and (txid, payment_id, False) in parts:
            continue
        first = next(iter(by_subaddr.values()))
        total = sum(t.amount for t in by_subaddr.values())
        out[(txid, payment_id)] = Transfer(
            txid=txid, payment_id=payment_id, amount=total, height=first.height,
            confirmations=first.confirmations, in_pool=in_pool,
            double_spend_seen=any(t.double_spend_seen for t in by_subaddr.values()),
            subaddr=first.subaddr,
            unlock_time=max(t.unlock_time for t in by_subaddr.values()))
    return out


class Crediting:
    """The crediting rules for one node config."""

    def __init__(self, config: Config, actor: str = ACTOR) -> None:
        self.config = config
        self.actor = actor
        needed = [n for s in config.services
                  for n in (s.firstVerificationsNeeded, s.subsequentVerificationsNeeded)]
        self.watch_confirmations = max([MIN_WATCH_CONFIRMATIONS, *needed])

    # --- what to ask the wallet ---

    def scan_height(self, ledger: Ledger) -> int:
        """Highest block index already scanned; a fresh ledger starts below start_height."""
        stored = ledger.meta(SCAN_HEIGHT_KEY)
        if stored is not None:
            return int(stored)
        return max(0, self.config.wallet.start_height - 1)

    def query_height(self, ledger: Ledger) -> int:
        """`min_height` for the next get_transfers (exclusive): low enough to list every
        payment still being watched, and a margin of blocks for short reorgs."""
        low = self.scan_height(ledger) - REORG_MARGIN
        for p in ledger.watched_payments(self.watch_confirmations):
            if p.state == "in":
                low = min(low, p.height - 1)
        # never below the configured first block: what came before is not ours to credit
        return max(0, self.config.wallet.start_height - 1, low)

    def missing(self, ledger: Ledger, transfers: Iterable[Transfer]) -> list[str]:
        """Txids of watched payments the listing no longer shows: ask the wallet about
        each one (get_transfer_by_txid) before calling it vanished."""
        listed = {t.txid for t in transfers}
        watched = ledger.watched_payments(self.watch_confirmations)
        return sorted({p.txid for p in watched
                       if p.state in ("pool", "in") and p.txid not in listed})

    # --- applying one poll ---

    def apply(self, tx: Tx, transfers: Iterable[Transfer], wallet_height: int,
              vanished: Iterable[str] = ()) -> Outcome:
        """Apply one poll inside `tx`. `vanished`: txids the wallet confirmed it no longer
        has. Stores the scan height (wallet_height - 1) in the same transaction."""
        out = Outcome()
        for t in merge(transfers).values():
            self._one(tx, t, out)
        for txid in sorted(set(vanished)):
            for row in self._rows_of(tx, txid):
                self._vanished(tx, row, out)
        previous = tx.meta(SCAN_HEIGHT_KEY)
        scanned = wallet_height - 1
        if previous is None or scanned > int(previous):
            tx.set_meta(SCAN_HEIGHT_KEY, str(scanned))
        return out

    def _one(self, tx: Tx, t: Transfer, out: Outcome) -> None:
        if t.amount == 0:
            self._reject(tx, t, "amount is 0", out)
            return
        try:
            authid = parse_authid(t.payment_id)
        except AuthidError:
            self._reject(tx, t, "payment id is not 16 hex characters", out)
            return
        if t.unlock_time:
            # the payer locked the funds: the provider could not spend them (issue #3)
            self._reject(tx, t, f"funds locked by unlock_time {t.unlock_time}", out)
            return
        service = self.config.service(service_of(authid))
        row = tx.payment(t.txid, authid)
        if service is None:
            if row is None:
                self._reject(tx, t, f"unknown service {service_of(authid)}", out)
            # else: credited before its service left the config; nothing more to apply
            return
        rules = access.rules_for(self.config, service)
        if row is None:
            self._credit(tx, t, authid, service, rules, out)
        else:
            self._update(tx, t, row, rules, out)

    def _reject(self, tx: Tx, t: Transfer, reason: str, out: Outcome) -> None:
        if not tx.record_rejected(t.txid, t.payment_id, t.amount, reason):
            return  # already recorded on an earlier poll
        tx.audit(self.actor, "rejected", _audit_authid(t.payment_id), txid=t.txid,
                 payment_id=t.payment_id, amount=t.amount, reason=reason)
        tx.emit(PaymentRejected(txid=t.txid, payment_id=t.payment_id, amount=t.amount,
                                reason=reason))
        out.rejected += 1
        out.note(logging.WARNING, "payment id %s: not credited, %s (txid %s, amount %d)",
                 t.payment_id[:20], reason, _short_tx(t.txid), t.amount)

    def _credit(self, tx: Tx, t: Transfer, authid: str, service: Service, rules: Rules,
                out: Outcome) -> None:
        ordinal = tx.count_live_payments(authid) + 1
        spendable = _spendable(rules, ordinal, t)
        state = "pool" if t.in_pool else "in"
        if not tx.insert_payment(t.txid, authid, t.amount, t.height, t.confirmations, state,
                                 spendable, ordinal):
            return  # (txid, authid) already recorded: a replay credits nothing
        tx.ensure_authid(authid, service.key)
        if spendable:
            fresh = tx.credit(authid, t.amount, payment=True)
        else:
            fresh = tx.add_pending(authid, t.amount, payment=True)
        tx.audit(self.actor, "credited", authid, txid=t.txid, amount=t.amount,
                 confirmations=t.confirmations, height=t.height, spendable=spendable,
                 ordinal=ordinal)
        tx.emit(PaymentCredited(authid=authid, txid=t.txid, amount=t.amount,
                                confirmations=t.confirmations, height=t.height,
                                spendable=spendable))
        out.credited += 1
        out.note(logging.INFO, "authid %s: credited %d (txid %s, %d confirmations%s)",
                 short(authid), t.amount, _short_tx(t.txid), t.confirmations,
                 "" if spendable else ", not yet spendable")
        access.reevaluate(tx, fresh, rules, self.actor)
        if t.in_pool and t.double_spend_seen and not spendable:
            paid = tx.payment(t.txid, authid)
            assert paid is not None
            self._revoke(tx, paid, "double spend seen", out)

    def _update(self, tx: Tx, t: Transfer, row: PaymentRow, rules: Rules,
                out: Outcome) -> None:
        state = "pool" if t.in_pool else "in"
        if row.state == "revoked":
            if not t.in_pool and t.confirmations > 0:
                self._reinstate(tx, t, row, rules, out)
            return
        if row.state == "vanished" and t.in_pool:
            return
        if t.in_pool and t.double_spend_seen and not row.spendable:
            self._revoke(tx, row, "double spend seen", out)
            return
        spendable = row.spendable or _spendable(rules, row.ordinal, t)
        if (state, t.height, t.confirmations, spendable) == (
                row.state, row.height, row.confirmations, row.spendable):
            return
        tx.update_payment(row.txid, row.authid, t.height, t.confirmations, state, spendable)
        tx.emit(PaymentConfirmed(authid=row.authid, txid=row.txid,
                                 confirmations=t.confirmations, height=t.height,
                                 spendable=spendable))
        out.confirmed += 1
        if spendable and not row.spendable:
            # pending -> credit: the payment has the confirmations its place needs
            fresh = tx.release_pending(row.authid, row.amount)
            tx.audit(self.actor, "spendable", row.authid, txid=row.txid, amount=row.amount,
                     confirmations=t.confirmations)
            out.note(logging.INFO, "authid %s: payment spendable (txid %s, %d confirmations)",
                     short(row.authid), _short_tx(row.txid), t.confirmations)
            access.reevaluate(tx, fresh, rules, self.actor)
        else:
            out.note(logging.DEBUG, "authid %s: txid %s now has %d confirmations",
                     short(row.authid), _short_tx(row.txid), t.confirmations)

    def _vanished(self, tx: Tx, row: PaymentRow, out: Outcome) -> None:
        if row.state not in ("pool", "in"):
            return
        reason = "left the pool unmined" if row.state == "pool" else "removed by a reorg"
        if not row.spendable:
            self._revoke(tx, row, reason, out)
            return
        # the rules already let it be spent: keep the credit, stop watching, say so
        tx.update_payment(row.txid, row.authid, row.height, row.confirmations, "vanished",
                          True)
        tx.audit(self.actor, "vanished", row.authid, txid=row.txid, amount=row.amount,
                 reason=reason + ", credit kept (already spendable)")
        out.note(logging.WARNING, "authid %s: txid %s %s; credit kept, it was spendable",
                 short(row.authid), _short_tx(row.txid), reason)

    def _revoke(self, tx: Tx, row: PaymentRow, reason: str, out: Outcome) -> None:
        tx.update_payment(row.txid, row.authid, row.height, row.confirmations, "revoked",
                          False)
        # only a payment not yet spendable is revoked: its amount sits in `pending`
        tx.revoke(row.authid, row.amount, from_pending=not row.spendable)
        tx.audit(self.actor, "revoked", row.authid, txid=row.txid, amount=row.amount,
                 reason=reason)
        tx.emit(PaymentRevoked(authid=row.authid, txid=row.txid, amount=row.amount,
                               reason=reason))
        out.revoked += 1
        out.note(logging.WARNING, "authid %s: revoked %d (txid %s, %s)", short(row.authid),
                 row.amount, _short_tx(row.txid), reason)

    def _reinstate(self, tx: Tx, t: Transfer, row: PaymentRow, rules: Rules,
                   out: Outcome) -> None:
        """A revoked payment turned up mined after all: credit it again (revoked -> in)."""
        spendable = _spendable(rules, row.ordinal, t)
        tx.update_payment(row.txid, row.authid, t.height, t.confirmations, "in", spendable)
        if spendable:
            fresh = tx.credit(row.authid, row.amount, payment=True)
        else:
            fresh = tx.add_pending(row.authid, row.amount, payment=True)
        tx.audit(self.actor, "reinstated", row.authid, txid=row.txid, amount=row.amount,
                 confirmations=t.confirmations, spendable=spendable)
        tx.emit(PaymentConfirmed(authid=row.authid, txid=row.txid,
                                 confirmations=t.confirmations, height=t.height,
                                 spendable=spendable))
        out.confirmed += 1
        out.note(logging.WARNING, "authid %s: reinstated %d (txid %s mined after all, "
                 "%d confirmations)", short(row.authid), row.amount, _short_tx(row.txid),
                 t.confirmations)
        access.reevaluate(tx, fresh, rules, self.actor)

    @staticmethod
    def _rows_of(tx: Tx, txid: str) -> list[PaymentRow]:
        return [p for p in tx.watched_payments(confirmations_below=2**62) if p.txid == txid]


def _spendable(rules: Rules, ordinal: int, t: Transfer) -> bool:
    # a pool tx the network saw double-spent waits for a block whatever the rules say
    if t.in_pool and t.double_spend_seen:
        return False
    return credit_rules.is_spendable(rules, ordinal, t.confirmations)


def _short_tx(txid: str) -> str:
    return txid[:8] + "..."


def _audit_authid(payment_id: str) -> str:
    try:
        return parse_authid(payment_id)
    except AuthidError:
        return ""
