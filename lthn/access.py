"""Applies the credit rules to an authid inside a ledger transaction.

The one place where an authid's access changes (PENDING -> ACTIVE -> DEPLETED -> ACTIVE;
any -> REVOKED by hand, REVOKED -> ACTIVE only by a grant) and where credit is added,
revoked or spent; each change writes its audit line and queues
its bus message in the same transaction, so money, access, audit and events never
disagree after a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from lthn import credit_rules
from lthn.config import Config, Service
from lthn.credit_rules import Rules
from lthn.ledger import AuthidRow, Tx
from lthn.messages import AuthidActivated, AuthidCharged, AuthidDeactivated


class State(enum.Enum):
    PENDING = "PENDING"      # known, never had enough spendable credit
    ACTIVE = "ACTIVE"        # may use the service
    DEPLETED = "DEPLETED"    # was active, credit ran out; a top-up re-activates
    REVOKED = "REVOKED"      # refused by hand (lthnctl authid revoke); only a grant re-admits


def rules_for(config: Config, service: Service) -> Rules:
    return Rules(
        cost=config.atomic(service.cost),
        first_minutes=service.firstPrePaidMinutes,
        first_confirmations=service.firstVerificationsNeeded,
        next_minutes=service.subsequentPrePaidMinutes,
        next_confirmations=service.subsequentVerificationsNeeded,
    )


def reevaluate(tx: Tx, row: AuthidRow, rules: Rules, actor: str) -> AuthidRow:
    """Activate or deactivate `row` (read in this transaction) as the rules say; returns
    the fresh row."""
    balance = row.credit - row.spent
    if row.state == State.REVOKED.value:
        return row   # the operator's word stands over the rules until `authid grant` (#19)
    if row.state != State.ACTIVE.value and credit_rules.may_activate(
            rules, row.activations, balance):
        # PENDING/DEPLETED -> ACTIVE: enough confirmed credit for the prepaid minutes
        row = tx.activate(row.authid)
        tx.audit(actor, "activated", row.authid, balance=balance)
        tx.emit(AuthidActivated(authid=row.authid, service_id=row.service_id, balance=balance))
    elif row.state == State.ACTIVE.value and credit_rules.must_deactivate(rules, balance):
        # ACTIVE -> DEPLETED: the balance cannot pay the next second
        row = deactivate(tx, row, "credit exhausted", actor)
    return row


def deactivate(tx: Tx, row: AuthidRow, reason: str, actor: str) -> AuthidRow:
    """ACTIVE -> DEPLETED with its audit line and `authid.deactivated`; the fresh row."""
    fresh = tx.deactivate(row.authid)
    tx.audit(actor, "deactivated", row.authid, reason=reason, balance=fresh.balance)
    tx.emit(AuthidDeactivated(authid=row.authid, reason=reason))
    return fresh


@dataclass(frozen=True)
class Charge:
    amount: int        # atomic units charged (never more than the balance was)
    row: AuthidRow     # the authid's row after the charge


@dataclass(frozen=True)
class Use:
    """Time of use to charge one authid: its row (read in this transaction), its rules,
    the milliseconds, and why (the billing mode)."""
    row: AuthidRow
    rules: Rules
    ms: int
    reason: str


def charge(tx: Tx, row: AuthidRow, rules: Rules, ms: int, reason: str, actor: str) -> Charge:
    """Charge `ms` of use (never more than the balance of `row`, read in this transaction).

    The balance changes on every tick; the spend row, audit line and `authid.charged`
    message are per minute of use (and at exhaustion), so a busy node's ledger grows by
    minutes, not ticks.
    """
    return charge_many(tx, [Use(row, rules, ms, reason)], actor)[0]


def charge_many(tx: Tx, uses: Sequence[Use], actor: str) -> list[Charge]:
    """`charge` of many authids (each once) with a few statements in all, not a few
    each (a tick charges hundreds, #16); the charges in the order of `uses`."""
    amounts = [min(credit_rules.charge_for(u.rules, u.row.charged_ms, u.ms),
                   max(0, u.row.balance)) for u in uses]
    fresh = tx.spend_many([(u.row, amount, u.ms) for u, amount in zip(uses, amounts, strict=True)])
    periods = [u.row.charged_ms // credit_rules.MS_PER_MINUTE for u in uses]
    totals = tx.add_spends([(u.row.authid, amount, u.ms, u.reason, period)
                            for u, amount, period in zip(uses, amounts, periods, strict=True)])
    audits: list[tuple[str, dict]] = []
    messages: list[AuthidCharged] = []
    for u, row, period, (total, total_ms) in zip(uses, fresh, periods, totals, strict=True):
        minute_done = row.charged_ms // credit_rules.MS_PER_MINUTE > period
        if total and (minute_done or credit_rules.must_deactivate(u.rules, row.balance)):
            audits.append((row.authid, dict(amount=total, ms=total_ms, minute=period,
                                            reason=u.reason)))
            messages.append(AuthidCharged(authid=row.authid, amount=total, balance=row.balance))
    tx.audit_many(actor, "charged", audits)
    tx.emit_many(messages)
    return [Charge(amount, row) for amount, row in zip(amounts, fresh, strict=True)]


# --- changes by hand (lthnctl, issue #19): each with its audit line naming who and why ---

def grant(tx: Tx, authid: str, service_id: str, amount: int, reason: str,
          actor: str) -> AuthidRow:
    """Admit an authid whatever its payments: add `amount` of credit and make it ACTIVE
    (from any state, REVOKED too)."""
    tx.ensure_authid(authid, service_id)
    row = tx.credit(authid, amount)
    tx.audit(actor, "granted", authid, amount=amount, reason=reason)
    if row.state != State.ACTIVE.value:
        # PENDING/DEPLETED/REVOKED -> ACTIVE, by hand
        row = tx.activate(authid)
        tx.audit(actor, "activated", authid, balance=row.balance, reason=reason)
        tx.emit(AuthidActivated(authid=authid, service_id=row.service_id,
                                balance=row.balance))
    return row


def revoke(tx: Tx, row: AuthidRow, reason: str, actor: str) -> AuthidRow:
    """Refuse an authid until granted again; its credit stays (a grant gives it back).
    Live sessions are cut by sessiond on `authid.deactivated`."""
    fresh = tx.revoke_access(row.authid)
    tx.audit(actor, "revoked", row.authid, reason=reason, balance=fresh.balance,
             was=row.state)
    tx.emit(AuthidDeactivated(authid=row.authid, reason=f"revoked: {reason}"))
    return fresh


def topup(tx: Tx, authid: str, service_id: str, amount: int, rules: Rules, reason: str,
          actor: str) -> AuthidRow:
    """Add credit by hand; the rules then decide activation, as for a payment."""
    tx.ensure_authid(authid, service_id)
    row = tx.credit(authid, amount)
    tx.audit(actor, "topped up", authid, amount=amount, reason=reason, balance=row.balance)
    return reevaluate(tx, row, rules, actor)


def spend_by_hand(tx: Tx, row: AuthidRow, amount: int, rules: Rules, reason: str,
                  actor: str) -> AuthidRow:
    """Take `amount` (at most the balance) by hand; an ACTIVE authid that can no longer
    pay is deactivated. The spend gets a spends row of its own (period: minus the time in
    milliseconds), so spends still add up to what was spent."""
    fresh = tx.spend(row.authid, amount, 0)
    tx.add_spend(row.authid, amount, 0, f"by hand: {reason}", -int(tx.now * 1000))
    tx.audit(actor, "spent by hand", row.authid, amount=amount, reason=reason,
             balance=fresh.balance)
    tx.emit(AuthidCharged(authid=row.authid, amount=amount, balance=fresh.balance))
    return reevaluate(tx, fresh, rules, actor)
