"""Applies the credit rules to an authid inside a ledger transaction.

The one place where an authid's access changes (PENDING -> ACTIVE -> DEPLETED -> ACTIVE)
and where credit is added, revoked or spent; each change writes its audit line and queues
its bus message in the same transaction, so money, access, audit and events never
disagree after a crash.
"""

from __future__ import annotations

import enum
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


def charge(tx: Tx, row: AuthidRow, rules: Rules, ms: int, reason: str, actor: str) -> Charge:
    """Charge `ms` of use (never more than the balance of `row`, read in this transaction).

    The balance changes on every tick; the spend row, audit line and `authid.charged`
    message are per minute of use (and at exhaustion), so a busy node's ledger grows by
    minutes, not ticks.
    """
    amount = min(credit_rules.charge_for(rules, row.charged_ms, ms), max(0, row.balance))
    fresh = tx.spend(row.authid, amount, ms)
    period = row.charged_ms // credit_rules.MS_PER_MINUTE
    total, total_ms = tx.add_spend(row.authid, amount, ms, reason, period)
    minute_done = fresh.charged_ms // credit_rules.MS_PER_MINUTE > period
    if total and (minute_done or credit_rules.must_deactivate(rules, fresh.balance)):
        tx.audit(actor, "charged", row.authid, amount=total, ms=total_ms, minute=period,
                 reason=reason)
        tx.emit(AuthidCharged(authid=row.authid, amount=total, balance=fresh.balance))
    return Charge(amount, fresh)
