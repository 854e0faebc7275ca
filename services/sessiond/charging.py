"""Which authids to charge this tick, and for how many milliseconds (issues #4, #16).

The decisions are pure functions of an authid's ledger row, its sessions and the clock
(`plan`, `billable_ms`, `next_look`); `charge_tick` applies them inside the caller's
transaction with `lthn.access.charge` / `reevaluate`, to the authids its `Schedule` says
are due a look (not every active authid every tick: #16). Amounts always come from the
ledger's `spending_since` / `last_used` / `charged_ms`, never from memory, so a restart
neither charges twice nor forgets time, and a look that comes late charges what an
earlier one would have: each look charges [max(spending_since, last_used), now].

Time is in integer milliseconds (`to_ms`) so consecutive ticks telescope exactly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from lthn import access, credit_rules
from lthn.authid import short
from lthn.config import Config, Service
from lthn.credit_rules import MS_PER_MINUTE
from lthn.ledger import AuthidRow, SessionRow, Tx
from services.sessiond.schedule import REGULAR, SOON, URGENT, Schedule

log = logging.getLogger(__name__)

ACTOR = "sessiond"
WALLCLOCK = "wallclock"
CONNECTED = "connected"
MS_PER_SECOND = 1000
ACTIVE = access.State.ACTIVE.value
CHANGES_PER_TICK = 5000    # ledger changes read in one tick (a burst waits for the next)
WAITING_PER_TICK = 1000    # authids listed as past their max wait to spend, per tick
LOGGED_STARTS = 10         # spending starts logged one by one in a tick; more: one line


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
    interval_ms: int = MS_PER_MINUTE   # charge at least this often (`charge_interval`)


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


def dry_ms(rules: credit_rules.Rules, balance: int) -> int | None:
    """Milliseconds of use the balance pays before it can no longer pay the next second
    (`credit_rules.must_deactivate`); None when time costs nothing."""
    if rules.cost <= 0:
        return None
    return max(0, (60 * balance - rules.cost) * MS_PER_SECOND // rules.cost)


def next_look(row: AuthidRow, now: int, spans: list[Span], mode: str, grace_ms: int,
              policy: Policy, rules: credit_rules.Rules) -> tuple[int, int] | None:
    """When an authid needs its next look, after one at `now` left `row` (pure): (ms,
    schedule level), or None until its session opens, the ledger changes it, or (not
    spending yet) the ledger lists it as waiting past the max wait to spend."""
    if row.state != ACTIVE or row.spending_since is None:
        return None
    if not policy.tracking:
        mode = WALLCLOCK
    # charge at the end of the minute of use it is in (one spends row per minute) or
    # after `charge_interval`, or when its balance runs out, whichever comes first
    dry = dry_ms(rules, row.balance)
    step = min(MS_PER_MINUTE - row.charged_ms % MS_PER_MINUTE, policy.interval_ms)
    step = step if dry is None else min(step, dry)
    if mode != WALLCLOCK and not any(s.end is None for s in spans):
        # connected, no open session: only the idle grace after the last one is charged
        ends = [s.end + grace_ms for s in spans if s.end is not None]
        if not ends or max(ends) <= now:
            return None
        step = min(step, max(ends) - now)
    return now + max(1, step), URGENT if dry is not None and dry <= step else REGULAR


@dataclass(frozen=True)
class TickResult:
    charged: dict[str, int]      # authid -> atomic units charged
    deactivated: list[str]       # authids this tick deactivated (credit exhausted)
    not_active: set[str]         # live authids the ledger does not call active
    looked: int = 0              # authids looked at (rows read) this tick


def _grace_ms(service: Service) -> int:
    return round(service.idleGrace * 1000)


def _runs_without_session(config: Config, row: AuthidRow) -> bool:
    """Its time is charged whether or not a session is open (wallclock billing)."""
    if not config.sessions.tracking:
        return True
    service = config.service(row.service_id)
    return row.spending_since is not None and service is not None and \
        service.billing == WALLCLOCK


def _start(tx: Tx, config: Config, schedule: Schedule, live: set[str], now: int) -> None:
    """Plan from the ledger (a start, or `control.resync`): the live authids, those a
    restart may have left owing an idle grace, and those charged without a session.
    (Those waiting for a first session are the ledger's to list, every tick.)"""
    schedule.seq = tx.change_seq()
    grace = max((round(s.idleGrace * 1000) for s in config.services), default=0)
    for authid in live | tx.authids_owing_session_time(grace / 1000):
        schedule.soon(authid, now, SOON)
    wallclock = None if not config.sessions.tracking else \
        [s.id for s in config.services if s.billing == WALLCLOCK]
    for authid in tx.authids_spending(wallclock):
        schedule.soon(authid, now, REGULAR)
    schedule.inactive &= live


def _follow_changes(tx: Tx, config: Config, schedule: Schedule, live: set[str],
                    now: int) -> None:
    """Authids whose state, credit or service changed since the last tick (any writer),
    at most CHANGES_PER_TICK (the rest next tick): a change to a live one is looked at
    now (a revocation may leave it seconds), a burst of activations costs no look."""
    assert schedule.seq is not None
    for seq, row in tx.authids_changed(schedule.seq, CHANGES_PER_TICK):
        schedule.seq = max(schedule.seq, seq)
        if row.state != ACTIVE:
            schedule.put(row.authid, None)
            if row.authid in live:
                schedule.inactive.add(row.authid)
            continue
        schedule.inactive.discard(row.authid)
        if row.authid in live:
            schedule.soon(row.authid, now, URGENT)
        elif _runs_without_session(config, row):
            schedule.soon(row.authid, now, SOON)


def charge_tick(tx: Tx, config: Config, schedule: Schedule, live: set[str],
                touched: set[str]) -> TickResult:
    """Charge the authids due a look for the time since their last charge, in the
    caller's transaction; deactivate (through `access.reevaluate`) those whose credit is
    gone, and plan each one's next look.

    `live`: authids with an open session (or closed this tick); `touched`: authids whose
    session opened or closed this tick.
    """
    policy = Policy(config.sessions.tracking, round(config.sessions.max_wait_to_spend * 1000),
                    round(config.sessions.charge_interval * 1000))
    now = to_ms(tx.now)
    if not schedule.started:
        _start(tx, config, schedule, live, now)
    else:
        _follow_changes(tx, config, schedule, live, now)
    for authid in touched:
        schedule.soon(authid, now, SOON)
    # waiting for a first session past the max wait (at once with tracking off): the
    # ledger lists them, an index says which, so nothing is kept for the idle ones
    waited = policy.max_wait_ms if policy.tracking else 0
    for authid in tx.authids_waiting_to_spend((now - waited) / 1000, WAITING_PER_TICK):
        schedule.soon(authid, now, REGULAR)
    schedule.inactive &= live
    charged: dict[str, int] = {}
    deactivated: list[str] = []
    looked = schedule.pop_due(now)
    # every row and session the looks need, read in two statements (#16); a look changes
    # only its own authid's row, so reading them all first reads what each look would
    rows = tx.authid_rows(looked)
    services = {sid: config.service(sid) for sid in {r.service_id for r in rows.values()}}
    rules = {sid: access.rules_for(config, s) for sid, s in services.items() if s is not None}
    sessions: dict[str, list[SessionRow]] = {}
    if policy.tracking:
        sessions = tx.sessions_of_many({
            authid: (_floor(row) - _grace_ms(services[row.service_id])) / 1000
            for authid, row in rows.items() if row.state == ACTIVE
            and services[row.service_id] is not None})
    # decide every look first, then write the decisions with a few statements in all
    # (a tick charges hundreds, #16); a look changes only its own authid's row
    decided: list[tuple[AuthidRow, Plan, str, int, list[Span]]] = []
    for authid in looked:
        row = rows.get(authid)
        if row is None or row.state != ACTIVE:
            if authid in live:
                schedule.inactive.add(authid)
            continue
        schedule.inactive.discard(authid)
        service = services[row.service_id]
        if service is None:
            # never charged; looked at again when the ledger changes it (or a restart)
            log.warning("authid %s: service %s is not in the config; not charged",
                        short(row.authid), row.service_id)
            continue
        grace = _grace_ms(service)
        mode = service.billing if policy.tracking else WALLCLOCK
        spans = spans_of(sessions.get(authid, ()))
        decided.append((row, plan(row, now, spans, mode, grace, policy), mode, grace, spans))
    # ACTIVE, not spending -> spending
    starts = [(row, d.spending_since / 1000, d.why) for row, d, *_ in decided
              if d.spending_since is not None]
    begun = {r.authid: r for r in tx.start_spending_many([(r, s) for r, s, _ in starts])}
    tx.audit_many(ACTOR, "spending", [(row.authid, dict(why=why, since=since))
                                      for row, since, why in starts])
    started = [(row.authid, why) for row, _, why in starts]
    uses = [access.Use(begun.get(row.authid, row), rules[row.service_id], d.ms, mode)
            for row, d, mode, _, _ in decided if d.ms > 0]
    done = {c.row.authid: c for c in access.charge_many(tx, uses, ACTOR)}
    for row, _, mode, grace, spans in decided:
        row = begun.get(row.authid, row)
        if row.authid in done:
            charge = done[row.authid]
            charged[row.authid] = charge.amount
            row = access.reevaluate(tx, charge.row, rules[row.service_id], ACTOR)
            if row.state != ACTIVE:
                deactivated.append(row.authid)
                continue
        look = next_look(row, now, spans, mode, grace, policy, rules[row.service_id])
        if look is not None:
            schedule.put(row.authid, *look)
    _log_started(started)
    return TickResult(charged, deactivated, set(schedule.inactive), len(looked))


def _log_started(started: list[tuple[str, str]]) -> None:
    """A line per authid that started spending, or one line for the tick when many did
    (10,000 sessions opening at once: a line each costs more than charging them, #16;
    the audit has each one)."""
    if len(started) <= LOGGED_STARTS:
        for authid, why in started:
            log.info("authid %s: spending started (%s)", short(authid), why)
        return
    whys = Counter(why for _, why in started)
    log.info("%d authids: spending started (%s), %s, ...", len(started),
             ", ".join(f"{n} {why}" for why, n in whys.most_common()),
             ", ".join(short(a) for a, _ in started[:LOGGED_STARTS]))
