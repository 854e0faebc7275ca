"""Applies the credit rules to an authid inside a ledger transaction.

The one place where an authid's access changes (PENDING -> ACTIVE -> DEPLETED -> ACTIVE)
and where credit is added, revoked or spent; each change writes its audit line and queues
its bus message in the same transaction, so money, access, audit and events never
disagree after a crash.
"""

from __future__ import annotations

import enum

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
    """Activate or deactivate `row` as the rules say; returns the fresh row."""
    balance = row.credit - row.spent
    if row.state != State.ACTIVE.value and credit_rules.may_activate(
            rules, row.activations, balance):
        # PENDING/DEPLETED -> ACTIVE: enough confirmed credit for the prepaid minutes
        tx.update_authid(row.authid, state=State.ACTIVE.value, activations=row.activations + 1,
                         activated_at=tx.now, spending_since=None)
        tx.audit(actor, "activated", row.authid, balance=balance)
        tx.emit(AuthidActivated(authid=row.authid, service_id=row.service_id, balance=balance))
    elif row.state == State.ACTIVE.value and credit_rules.must_deactivate(rules, balance):
        # ACTIVE -> DEPLETED: the balance cannot pay the next second
        deactivate(tx, row, "credit exhausted", actor)
    fresh = tx.authid(row.authid)
    assert fresh is not None
    return fresh


def deactivate(tx: Tx, row: AuthidRow, reason: str, actor: str) -> None:
    tx.update_authid(row.authid, state=State.DEPLETED.value, spending_since=None)
    tx.audit(actor, "deactivated", row.authid, reason=reason, balance=row.credit - row.spent)
    tx.emit(AuthidDeactivated(authid=row.authid, reason=reason))


def charge(tx: Tx, row: AuthidRow, rules: Rules, ms: int, reason: str, actor: str) -> int:
    """Charge `ms` of use (never more than the balance); returns the amount charged.

    The balance changes on every tick; the spend row, audit line and `authid.charged`
    message are per minute of use (and at exhaustion), so a busy node's ledger grows by
    minutes, not ticks.
    """
    amount = min(credit_rules.charge_for(rules, row.charged_ms, ms), max(0, row.balance))
    charged_ms = row.charged_ms + ms
    balance = row.balance - amount
    tx.update_authid(row.authid, charged_ms=charged_ms, spent=row.spent + amount,
                     last_used=tx.now)
    period = row.charged_ms // credit_rules.MS_PER_MINUTE
    total, total_ms = tx.add_spend(row.authid, amount, ms, reason, period)
    minute_done = charged_ms // credit_rules.MS_PER_MINUTE > period
    if total and (minute_done or credit_rules.must_deactivate(rules, balance)):
        tx.audit(actor, "charged", row.authid, amount=total, ms=total_ms, minute=period,
                 reason=reason)
        tx.emit(AuthidCharged(authid=row.authid, amount=total, balance=balance))
    return amount
