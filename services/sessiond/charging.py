"""Which authids to charge this tick, and for how many milliseconds (issue #4).

The decisions are pure functions of an authid's ledger row, its sessions and the clock
(`plan`, `billable_ms`); `charge_tick` applies them inside the caller's transaction with
`lthn.access.charge` / `reevaluate`. Amounts always come from the ledger's
`spending_since` / `last_used` / `charged_ms`, never from memory, so a restart neither
charges twice nor forgets time: each tick charges [max(spending_since, last_used), now].

Time is in integer milliseconds (`to_ms`) so consecutive ticks telescope exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from lthn import access
from lthn.authid import short
from lthn.config import Config
from lthn.ledger import AuthidRow, SessionRow, Tx

log = logging.getLogger(__name__)

ACTOR = "sessiond"
WALLCLOCK = "wallclock"
CONNECTED = "connected"


def to_ms(t: float) -> int:
    return round(t * 1000)


@dataclass(frozen=True)
class Span:
    """A session's time in ms; `end` is None while it is open."""
    start: int
    end: int | None


@dataclass(frozen=True)
class Policy:
    """The node-wide settings charging depends on (config `sessions`)."""
    tracking: bool
    max_wait_ms: int


@dataclass(frozen=True)
class Plan:
    """What to do for one active authid this tick."""
    spending_since: int | None   # ms; set when spending starts this tick, else None
    why: str                     # why spending starts ("" when it does not)
    ms: int                      # milliseconds to charge now


def spans_of(rows: Iterable[SessionRow]) -> list[Span]:
    return [Span(to_ms(r.started), None if r.ended is None else to_ms(r.ended)) for r in rows]


def spending_start(row: AuthidRow, now: int, spans: list[Span],
                   policy: Policy) -> tuple[int | None, str]:
    """When spending starts for an active authid not spending yet: at activation when
    sessions are not tracked, else at its first session or after max-wait-to-spend."""
    activated = to_ms(row.activated_at if row.activated_at is not None else row.modified)
    if not policy.tracking:
        return activated, "tracking off"
    starts: list[tuple[int, str]] = []
    first = [max(s.start, activated) for s in spans if s.end is None or s.end >= activated]
    if first:
        starts.append((min(first), "first session"))
    deadline = activated + policy.max_wait_ms
    if now >= deadline:
        starts.append((deadline, "max wait to spend"))
    if not starts:
        return None, ""
    return min(starts)


def billable_ms(mode: str, since: int, now: int, spans: list[Span], grace_ms: int) -> int:
    """Milliseconds of [since, now] to charge: all of it on wallclock billing; on connected
    billing only what some session covers, each extended by the idle grace after it ends."""
    if now <= since:
        return 0
    if mode == WALLCLOCK:
        return now - since
    covered = sorted((max(s.start, since), min(now, now if s.end is None else s.end + grace_ms))
                     for s in spans)
    total, reach = 0, since
    for start, end in covered:
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


def plan(row: AuthidRow, now: int, spans: list[Span], mode: str, grace_ms: int,
         policy: Policy) -> Plan:
    """The tick's decision for one ACTIVE authid (pure)."""
    since: int | None = None if row.spending_since is None else to_ms(row.spending_since)
    started, why = None, ""
    if since is None:
        started, why = spending_start(row, now, spans, policy)
        if started is None:
            return Plan(None, "", 0)
        since = started
    if row.last_used is not None:
        since = max(since, to_ms(row.last_used))
    if not policy.tracking:
        mode = WALLCLOCK  # nothing tells us when it is connected: time is charged as it runs
    return Plan(started, why, billable_ms(mode, since, now, spans, grace_ms))


def _floor(row: AuthidRow) -> int:
    """Sessions ending before this (less the grace) cannot change this tick's charge."""
    if row.spending_since is None:
        return to_ms(row.activated_at if row.activated_at is not None else row.modified)
    return max(to_ms(row.spending_since), to_ms(row.last_used or 0))


@dataclass
class Hints:
    """Which connected-billing authids may have billable session time. Memory only narrows
    which ledger rows to read; what is charged is always computed from the ledger."""
    everyone: bool = True                        # after a start: look at every authid once
    until: dict[str, int] = field(default_factory=dict)   # authid -> last end + grace (ms)


@dataclass(frozen=True)
class TickResult:
    charged: dict[str, int]      # authid -> atomic units charged
    deactivated: list[str]       # authids this tick deactivated (credit exhausted)
    active: set[str]             # authids still active after the tick


def charge_tick(tx: Tx, config: Config, live: set[str], hints: Hints) -> TickResult:
    """Charge every ACTIVE authid for the time since its last charge, in the caller's
    transaction; deactivate (through `access.reevaluate`) those whose credit is gone.

    `live`: authids with an open session row (or just closed this tick).
    """
    policy = Policy(config.sessions.tracking, round(config.sessions.max_wait_to_spend * 1000))
    now = to_ms(tx.now)
    charged: dict[str, int] = {}
    deactivated: list[str] = []
    rows = tx.authids_in((access.State.ACTIVE.value,))
    for row in rows:
        service = config.service(row.service_id)
        if service is None:
            log.warning("authid %s: service %s is not in the config; not charged",
                        short(row.authid), row.service_id)
            continue
        grace = round(service.idleGrace * 1000)
        mode = service.billing if policy.tracking else WALLCLOCK
        spans: list[Span] = []
        if policy.tracking and (hints.everyone or row.authid in live
                                or row.authid in hints.until):
            spans = spans_of(tx.sessions_of(row.authid, (_floor(row) - grace) / 1000))
            ends = [s.end + grace for s in spans if s.end is not None]
            if ends and max(ends) > now:
                hints.until[row.authid] = max(ends)
            else:
                hints.until.pop(row.authid, None)
        decision = plan(row, now, spans, mode, grace, policy)
        if decision.spending_since is not None:
            # ACTIVE, not spending -> spending
            row = tx.start_spending(row.authid, decision.spending_since / 1000)
            tx.audit(ACTOR, "spending", row.authid, why=decision.why,
                     since=decision.spending_since / 1000)
            log.info("authid %s: spending started (%s)", short(row.authid), decision.why)
        if decision.ms <= 0:
            continue
        rules = access.rules_for(config, service)
        done = access.charge(tx, row, rules, decision.ms, mode, ACTOR)
        charged[row.authid] = done.amount
        after = access.reevaluate(tx, done.row, rules, ACTOR)
        if after.state != access.State.ACTIVE.value:
            deactivated.append(row.authid)
    hints.everyone = False
    return TickResult(charged, deactivated, {r.authid for r in rows} - set(deactivated))
