"""Lethean's rules for when paid credit may be used and what time costs. Pure: no I/O.

Every daemon asks this module; none re-implements a rule (issue #3).

- A payment is *spendable* once it has the confirmations its place needs: the authid's
  first payment `firstVerificationsNeeded`, later ones `subsequentVerificationsNeeded`.
- An authid becomes active when its spendable balance buys `firstPrePaidMinutes`
  (never active before) or `subsequentPrePaidMinutes` (re-activation after running dry),
  and is at least one atomic unit.
- Time is charged at `cost` atomic units per minute, accrued per millisecond with the
  remainder carried, so many short ticks cost exactly what one long one does.
- An active authid is deactivated when its balance can no longer pay the next second.
"""

from __future__ import annotations

from dataclasses import dataclass

MS_PER_MINUTE = 60_000


@dataclass(frozen=True)
class Rules:
    cost: int                      # atomic units per minute
    first_minutes: int
    first_confirmations: int
    next_minutes: int
    next_confirmations: int


def confirmations_needed(rules: Rules, ordinal: int) -> int:
    """Confirmations a payment needs; ordinal 1 is the authid's first payment."""
    return rules.first_confirmations if ordinal <= 1 else rules.next_confirmations


def is_spendable(rules: Rules, ordinal: int, confirmations: int) -> bool:
    return confirmations >= confirmations_needed(rules, ordinal)


def prepaid_needed(rules: Rules, activations: int) -> int:
    """Balance needed to (re)activate, in atomic units."""
    minutes = rules.first_minutes if activations == 0 else rules.next_minutes
    return max(1, minutes * rules.cost)


def may_activate(rules: Rules, activations: int, balance: int) -> bool:
    return balance >= prepaid_needed(rules, activations)


def must_deactivate(rules: Rules, balance: int) -> bool:
    """True when the balance cannot pay the next second of use."""
    return balance <= 0 or balance * 60 < rules.cost


def charge_for(rules: Rules, charged_ms: int, more_ms: int) -> int:
    """What `more_ms` of use costs after `charged_ms` were already charged (exact integers)."""
    if more_ms <= 0:
        return 0
    before = rules.cost * charged_ms // MS_PER_MINUTE
    after = rules.cost * (charged_ms + more_ms) // MS_PER_MINUTE
    return after - before


def minutes_left(rules: Rules, balance: int) -> int:
    return max(0, balance) // rules.cost if rules.cost else 0
