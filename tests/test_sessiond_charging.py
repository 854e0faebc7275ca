"""sessiond's charging on a real ledger file with a clock moved by hand (issues #4, #16).

Cost 0.000006 coin/min = 600 atomic units per minute = 10 per second. A tick charges only
the authids due a look (at the end of a minute of use, a session's start or end, a
ledger change, credit running out); `tick(..., settle=True)` looks at every active authid
first (what `control.resync` does), so a test can read the ledger at any second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lthn import access
from lthn.authid import short
from lthn.config import parse
from lthn.ledger import Ledger
from services.sessiond import charging
from services.sessiond.charging import Policy, Span, billable_ms, plan
from services.sessiond.schedule import REGULAR, URGENT, Schedule
from services.sessiond.session_book import Observed, SessionBook

AUTHID = "1A00112233445566"
T0 = 1_700_000_000.0


class HandClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, billing: str = "connected", grace: float = 5.0,
                tracking: bool = True, max_wait: float = 30.0, cost: str = "0.000006",
                prepaid: int = 1):
    return parse({
        "provider": {"id": "ab" * 32},
        "state_dir": str(tmp_path),
        "services": [{"id": "1A", "name": "proxy", "type": "proxy", "cost": cost,
                      "firstPrePaidMinutes": prepaid, "billing": billing,
                      "idleGrace": grace}],
        "sessions": {"tracking": tracking, "max_wait_to_spend": max_wait, "tick": 1.0},
    }, "test.yaml")


class Node:
    """What sessiond keeps between ticks (its book and schedule) over a real ledger."""

    def __init__(self, path: Path, config, clock: HandClock) -> None:
        self.path, self.config, self.clock = path, config, clock
        self.ledger = Ledger.open(path, clock=clock)
        self.book = SessionBook("proxy", self.ledger.open_sessions("proxy"))
        self.schedule = Schedule()

    def activate(self, amount: int) -> None:
        rules = access.rules_for(self.config, self.config.services[0])
        with self.ledger.transaction() as tx:
            tx.ensure_authid(AUTHID, "1A")
            row = access.reevaluate(tx, tx.credit(AUTHID, amount), rules, "test")
        assert row.state == "ACTIVE"

    def tick(self, at: float, live: bool = False, settle: bool = False
             ) -> charging.TickResult:
        self.clock.now = T0 + at
        if settle:
            self.schedule.reset()
        observed = {AUTHID: Observed(AUTHID, AUTHID, "127.0.0.1", 0, 0)} if live else {}
        with self.ledger.transaction() as tx:
            before = self.book.authids
            closed = self.book.apply(tx, observed)
            after = self.book.authids
            return charging.charge_tick(tx, self.config, self.schedule, after | closed,
                                        (after - before) | closed)

    def restart(self) -> Node:
        """As after SIGKILL: memory gone, the ledger file is all that is left."""
        self.ledger.conn.close()
        return Node(self.path, self.config, self.clock)

    @property
    def row(self):
        return self.ledger.authid(AUTHID)


@pytest.fixture
def node_factory(tmp_path: Path):
    nodes = []

    def make(**settings) -> Node:
        node = Node(tmp_path / "ledger.sqlite", make_config(tmp_path, **settings),
                    HandClock())
        nodes.append(node)
        node.activate(6000)   # 10 minutes
        return node
    yield make
    for node in nodes:
        node.ledger.close()


# --- pure decisions ---

def test_billable_wallclock_is_all_the_time():
    assert billable_ms("wallclock", 1000, 4500, [], 0) == 3500
    assert billable_ms("wallclock", 5000, 4500, [], 0) == 0


def test_billable_connected_is_the_union_of_sessions_plus_grace():
    spans = [Span(0, 2000), Span(1000, 3000), Span(10_000, None)]
    # [0, 3000 + 500] and [10000, now]; before `since` is not charged again
    assert billable_ms("connected", 500, 12_000, spans, 500) == 3000 + 2000
    assert billable_ms("connected", 0, 12_000, [], 500) == 0


def test_plan_does_not_start_spending_before_a_session_or_the_max_wait(node_factory):
    node = node_factory()
    policy = Policy(tracking=True, max_wait_ms=30_000)
    row = node.row
    now = charging.to_ms(T0 + 29.999)
    assert plan(row, now, [], "wallclock", 0, policy) == charging.Plan(None, "", 0)
    first = plan(row, now, [Span(charging.to_ms(T0 + 20), None)], "wallclock", 0, policy)
    assert first == charging.Plan(charging.to_ms(T0 + 20), "first session", 9999)


# --- ticks on the ledger ---

def test_wallclock_starts_after_max_wait_and_runs_without_sessions(node_factory):
    node = node_factory(billing="wallclock", max_wait=30.0)
    assert node.tick(10).charged == {}
    assert node.row.spending_since is None
    node.tick(30)
    assert node.row.spending_since == pytest.approx(T0 + 30)
    assert node.tick(40).charged == {}          # not due: its minute ends at 90
    assert node.tick(40, settle=True).charged == {AUTHID: 100}
    assert node.tick(41, settle=True).charged == {AUTHID: 10}
    assert (node.row.spent, node.row.charged_ms) == (110, 11_000)
    assert node.tick(89).charged == {}
    assert node.tick(90).charged == {AUTHID: 490}   # the minute of use 30..90 is done
    assert [(m.amount, m.balance) for m in node.ledger.take_outbox()
            if m.topic == "authid.charged"] == [(600, 5400)]


def test_wallclock_starts_at_the_first_session_and_keeps_running_after_it(node_factory):
    node = node_factory(billing="wallclock", max_wait=1800.0)
    node.tick(4)
    for t in (5, 6, 7, 8):
        node.tick(t, live=True)
    assert node.row.spending_since == pytest.approx(T0 + 5)
    node.tick(20)   # session gone, wallclock keeps charging
    assert (node.row.spent, node.row.charged_ms) == (150, 15_000)


def test_connected_charges_sessions_plus_idle_grace_only(node_factory):
    node = node_factory(billing="connected", grace=5.0, max_wait=1800.0)
    node.tick(4)
    for t in (5, 6, 7, 8):
        node.tick(t, live=True)
    for t in range(9, 31):
        node.tick(t)            # closed at 9; charged until 9 + 5 grace
    assert node.row.charged_ms == 9_000
    for t in (40, 41):          # a new session: the idle gap 14..40 is not charged
        node.tick(t, live=True)
    node.tick(42, live=True, settle=True)
    assert node.row.charged_ms == 11_000
    assert node.row.spent == 110


def test_connected_with_max_wait_but_no_session_marks_spending_and_charges_nothing(
        node_factory):
    node = node_factory(billing="connected", max_wait=10.0)
    node.tick(11)
    node.tick(60)
    assert node.row.spending_since == pytest.approx(T0 + 10)
    assert (node.row.spent, node.row.charged_ms) == (0, 0)


def test_tracking_off_spends_wallclock_from_activation(node_factory):
    node = node_factory(billing="connected", tracking=False, max_wait=1800.0)
    node.tick(7)
    assert node.row.spending_since == pytest.approx(T0)
    assert (node.row.spent, node.row.charged_ms) == (70, 7_000)


def test_charging_is_exact_integers_over_odd_ticks(node_factory, tmp_path):
    node = node_factory(billing="wallclock", max_wait=0.0, cost="0.00000007")  # 7/min
    node.activate(10_000)
    at = 0.0
    for _ in range(500):
        at += 0.333
        node.tick(at, settle=True)      # every tick charges, as ticks did before #16
    total_ms = node.row.charged_ms
    assert total_ms == charging.to_ms(T0 + at) - charging.to_ms(T0)
    assert node.row.spent == 7 * total_ms // 60_000
    with node.ledger.transaction() as tx:
        assert tx.spends_total(AUTHID) == node.row.spent


def test_exhaustion_deactivates_without_overdraft(node_factory):
    node = node_factory(billing="wallclock", max_wait=0.0)   # 6000 = 10 minutes
    node.ledger.take_outbox()
    deactivated = []
    t = 0
    while not deactivated and t < 700:
        t += 1
        deactivated = node.tick(t).deactivated
    assert deactivated == [AUTHID] and t == 600
    row = node.row
    assert (row.state, row.spent, row.credit) == ("DEPLETED", 6000, 6000)
    topics = [m.topic for m in node.ledger.take_outbox()]
    assert topics.count("authid.deactivated") == 1
    assert node.tick(700).charged == {}   # a depleted authid is not charged


def test_restart_neither_double_charges_nor_loses_time(node_factory):
    node = node_factory(billing="wallclock", max_wait=0.0)
    for t in range(1, 11):
        node.tick(t)
    node.tick(10, settle=True)
    assert node.row.charged_ms == 10_000
    node = node.restart()
    node.tick(10.5)            # the same second again after a restart: half a second more
    assert node.row.charged_ms == 10_500
    node.tick(13, settle=True)  # the time sessiond was down is charged once
    assert node.row.charged_ms == 13_000
    assert node.row.spent == 130


def test_a_tick_that_dies_before_commit_charges_nothing_and_is_caught_up(node_factory):
    node = node_factory(billing="wallclock", max_wait=0.0)
    node.tick(5)
    node.clock.now = T0 + 6
    with pytest.raises(RuntimeError), node.ledger.transaction() as tx:
        charging.charge_tick(tx, node.config, node.schedule, set(), set())
        raise RuntimeError("killed mid-tick")
    assert node.row.charged_ms == 5_000
    node = node.restart()
    node.tick(7)
    assert node.row.charged_ms == 7_000


def test_restart_with_an_open_connected_session_charges_it_once(node_factory):
    node = node_factory(billing="connected", grace=2.0, max_wait=1800.0)
    for t in (1, 2):
        node.tick(t, live=True)
    node.tick(3, live=True, settle=True)
    assert node.row.charged_ms == 2_000
    node = node.restart()
    assert node.book.authids == {AUTHID}      # the open row is inherited
    node.tick(4, live=True)
    node.tick(5)                             # ended; grace 2 s
    for t in range(6, 12):
        node.tick(t)
    assert node.row.charged_ms == 6_000      # 1..5 live, 5..7 grace
    sessions = node.ledger.conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert sessions == 1


def test_restart_in_idle_grace_still_charges_the_rest_of_the_grace(node_factory):
    node = node_factory(billing="connected", grace=5.0, max_wait=1800.0)
    for t in (1, 2, 3):
        node.tick(t, live=True)
    node.tick(4)                             # closed at 4, grace until 9
    node = node.restart()                    # hints lost: the ledger must tell
    node.tick(6)
    node.tick(20)
    assert node.row.charged_ms == 8_000      # 1..4 live + 4..9 grace


def test_session_rows_and_messages(node_factory):
    node = node_factory(billing="connected")
    node.ledger.take_outbox()
    node.tick(1, live=True)
    node.tick(2, live=True)
    node.book.mark_cut(AUTHID, "credit exhausted")
    node.tick(3)
    msgs = node.ledger.take_outbox()
    opened = [m for m in msgs if m.topic == "session.opened"]
    closed = [m for m in msgs if m.topic == "session.closed"]
    assert len(opened) == 1 and opened[0].kind == "proxy" and opened[0].source == "127.0.0.1"
    assert len(closed) == 1 and closed[0].reason == "cut, credit exhausted"
    assert node.ledger.open_sessions() == []


# --- properties of the pure decisions (hypothesis) ---

span_lists = st.lists(
    st.tuples(st.integers(0, 3000), st.one_of(st.none(), st.integers(0, 3000))).map(
        lambda t: Span(t[0], None if t[1] is None else max(t[0], t[1]))),
    max_size=6)


def covered_by_brute_force(since: int, now: int, spans: list[Span], grace: int) -> int:
    def live(ms: int) -> bool:
        return any(s.start <= ms < (now if s.end is None else s.end + grace) for s in spans)
    return sum(1 for ms in range(since, now) if live(ms))


@settings(max_examples=12, deadline=None)
@given(spans=span_lists, since=st.integers(0, 3000), length=st.integers(0, 1500),
       grace=st.integers(0, 500))
def test_connected_billable_is_exactly_the_covered_milliseconds(spans, since, length, grace):
    now = since + length
    assert billable_ms("connected", since, now, spans, grace) == \
        covered_by_brute_force(since, now, spans, grace)


@settings(max_examples=12, deadline=None)
@given(spans=span_lists, cuts=st.lists(st.integers(1, 3999), max_size=8),
       grace=st.integers(0, 500))
def test_ticks_add_up_to_one_long_tick(spans, cuts, grace):
    """Charging [a, c] in ticks costs what one charge of [a, c] does (closed sessions)."""
    closed = [s if s.end is not None else Span(s.start, s.start) for s in spans]
    points = [0, *sorted(set(cuts)), 4000]
    parts = sum(billable_ms("connected", a, b, closed, grace)
                for a, b in zip(points, points[1:], strict=False))
    assert parts == billable_ms("connected", 0, 4000, closed, grace)


# --- looks only at what is due (#16) ---

def test_next_look_is_the_minute_end_the_dry_second_or_the_grace_end(node_factory):
    node = node_factory(billing="connected", grace=5.0, max_wait=30.0)
    policy = Policy(tracking=True, max_wait_ms=30_000)
    rules = access.rules_for(node.config, node.config.services[0])
    row = node.row
    t0 = charging.to_ms(T0)
    # not spending: no look planned; its session, or the ledger's list of authids past
    # their max wait (Tx.authids_waiting_to_spend), brings it back
    assert charging.next_look(row, t0 + 5, [], "connected", 5000, policy, rules) is None
    spending = row.__class__(**{**row.__dict__, "spending_since": T0, "charged_ms": 15_000})
    live = [Span(t0, None)]
    # live: at the end of its minute of use (15 s used: 45 s on), regular
    assert charging.next_look(spending, t0 + 15_000, live, "connected", 5000, policy,
                              rules) == (t0 + 60_000, REGULAR)
    # 7 seconds of credit left: urgent, at the second it can no longer pay the next one
    poor = spending.__class__(**{**spending.__dict__, "spent": 6000 - 70})
    assert charging.next_look(poor, t0 + 15_000, live, "connected", 5000, policy, rules) == (
        t0 + 21_000, URGENT)
    # ended at 10 s: the grace until 15 s, then nothing until a session opens
    ended = [Span(t0, t0 + 10_000)]
    assert charging.next_look(spending, t0 + 12_000, ended, "connected", 5000, policy,
                              rules) == (t0 + 15_000, REGULAR)
    assert charging.next_look(spending, t0 + 15_000, ended, "connected", 5000, policy,
                              rules) is None
    # wallclock runs on; a shorter charge_interval charges sooner
    assert charging.next_look(spending, t0 + 15_000, [], "wallclock", 5000, policy,
                              rules) == (t0 + 60_000, REGULAR)
    often = Policy(tracking=True, max_wait_ms=30_000, interval_ms=5000)
    assert charging.next_look(spending, t0 + 15_000, [], "wallclock", 5000, often,
                              rules) == (t0 + 20_000, REGULAR)


def test_a_tick_looks_at_the_authids_due_not_at_every_active_one(node_factory):
    """1,000 active authids, one of them live: after the first tick (which plans them all
    from the ledger), a tick reads only the live one when it is due; a ledger change by
    another program costs a look when it touches the live one (a revocation), not when it
    touches an idle one (a top-up)."""
    node = node_factory(billing="connected", max_wait=1800.0)
    others = [f"1B{i:014X}" for i in range(1000)]
    rules = access.rules_for(node.config, node.config.services[0])
    with node.ledger.transaction() as tx:
        for authid in others:
            tx.ensure_authid(authid, "1A")
            access.reevaluate(tx, tx.credit(authid, 6000), rules, "test")
    first = node.tick(1, live=True)
    assert first.looked == 1                       # only the live one owes anything
    looks = [node.tick(t, live=True).looked for t in range(2, 70)]
    assert sum(looks) == 1 and looks[61 - 2] == 1  # its minute of use ended at 61
    with node.ledger.transaction() as tx:           # paymentd credits one of the others
        tx.credit(others[7], 3000)
    assert node.tick(70, live=True).looked == 0
    with node.ledger.transaction() as tx:           # and revokes part of the live one's
        tx.revoke(AUTHID, 5000, from_pending=False)
    assert node.tick(71, live=True).looked == 1
    assert node.row.charged_ms == 70_000
    assert node.tick(71, live=True, settle=True).looked == 1   # the rest owe nothing


@settings(max_examples=12, deadline=None)
@given(pattern=st.lists(st.booleans(), min_size=1, max_size=150),
       billing=st.sampled_from(["connected", "wallclock"]), grace=st.sampled_from([0.0, 4.0]),
       credit=st.integers(500, 3000))
def test_looking_when_due_charges_what_every_tick_would(tmp_path_factory, pattern, billing,
                                                        grace, credit):
    """Sessions live or not per second, credit possibly running out: ticking when due and
    ticking everything every second leave the same ledger (charge, deactivation second)."""
    results = []
    for settle in (False, True):
        path = tmp_path_factory.mktemp("lazy")
        node = Node(path / "ledger.sqlite",
                    make_config(path, billing=billing, grace=grace, max_wait=20.0,
                                prepaid=0), HandClock())
        node.activate(credit)
        ends = []
        for t, live in enumerate(pattern, start=1):
            if node.tick(t, live=live, settle=settle).deactivated:
                ends.append(t)
        node.tick(len(pattern) + 30, settle=True)
        row = node.row
        results.append((row.charged_ms, row.spent, row.state, ends))
        node.ledger.close()
    assert results[0] == results[1]


def test_many_spending_starts_in_a_tick_are_one_log_line_and_an_audit_line_each(
        tmp_path, caplog):
    """#16: 9,900 sessions opening at once started spending 250 a tick, a log line each;
    more than LOGGED_STARTS in a tick are one line (the audit keeps every one)."""
    clock = HandClock()
    config = make_config(tmp_path, max_wait=30.0)
    node = Node(tmp_path / "ledger.sqlite", config, clock)
    rules = access.rules_for(config, config.services[0])
    many = [f"1A{i:014X}" for i in range(charging.LOGGED_STARTS + 5)]
    with node.ledger.transaction() as tx:
        for authid in [AUTHID, *many]:
            tx.ensure_authid(authid, "1A")
            access.reevaluate(tx, tx.credit(authid, 6000), rules, "test")
    caplog.set_level("INFO", logger=charging.__name__)
    clock.now = T0 + 31                       # past the max wait: all of them start
    with node.ledger.transaction() as tx:
        charging.charge_tick(tx, config, node.schedule, set(), set())
    lines = [r.getMessage() for r in caplog.records if "spending started" in r.getMessage()]
    # looked at in the schedule's order: due at the same time, by authid
    assert lines == [f"{len(many) + 1} authids: spending started ({len(many) + 1} max wait "
                     "to spend), " + ", ".join(short(a) for a in sorted([AUTHID, *many])[:10])
                     + ", ..."]
    assert sum(1 for _, event, _, _ in node.ledger.audit_lines()
               if event == "spending") == len(many) + 1
    caplog.clear()
    with node.ledger.transaction() as tx:     # one more, alone in its tick
        tx.ensure_authid("1A0000000000FFFF", "1A")
        access.reevaluate(tx, tx.credit("1A0000000000FFFF", 6000), rules, "test")
    clock.now = T0 + 62
    with node.ledger.transaction() as tx:
        charging.charge_tick(tx, config, node.schedule, set(), set())
    assert [r.getMessage() for r in caplog.records if "spending started" in
            r.getMessage()] == [f"authid {short('1A0000000000FFFF')}: spending started "
                                "(max wait to spend)"]
    node.ledger.close()
