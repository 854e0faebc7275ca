"""sessiond's Schedule: when each authid is next looked at (#16); memory only."""

from __future__ import annotations

from services.sessiond.schedule import REGULAR, SOON, URGENT, Schedule


def test_urgent_looks_all_come_then_the_others_at_most_so_many_soon_first():
    schedule = Schedule(per_tick=3)
    for i, at in enumerate((30, 10, 20, 40)):
        schedule.put(f"R{i}", at)
    schedule.put("S0", 5, SOON)
    schedule.put("S1", 6, SOON)
    schedule.put("U0", 25, URGENT)
    schedule.put("U1", 26, URGENT)
    schedule.put("U2", 50, URGENT)
    assert schedule.pop_due(35) == ["U0", "U1", "S0", "S1", "R1"]
    assert schedule.pop_due(35) == ["R2", "R0"]        # the rest waited a tick
    assert schedule.pop_due(60) == ["U2", "R3"]
    assert len(schedule) == 0 and schedule.pop_due(1000) == []


def test_put_replaces_never_forgets_and_soon_only_brings_forward():
    schedule = Schedule()
    schedule.put("A", 100)
    schedule.put("A", 50)                              # replaced: one look, at 50
    schedule.soon("A", 70, SOON)                       # earlier, and now at SOON
    assert schedule.due["A"] == (50, SOON)
    schedule.soon("A", 80, REGULAR)                    # later and less urgent: no change
    assert schedule.due["A"] == (50, SOON)
    schedule.soon("A", 90)                             # URGENT by default
    assert schedule.due["A"] == (50, URGENT)
    schedule.put("B", 10)
    schedule.put("B", None)                            # never, until something happens
    assert schedule.pop_due(60) == ["A"] and schedule.pop_due(1000) == []


def test_replaced_entries_are_compacted_away():
    schedule = Schedule()
    for at in range(5000):
        schedule.put("A", at)
    assert sum(len(h) for h in schedule.heaps) < 2000
    assert schedule.pop_due(10_000) == ["A"]


def test_reset_forgets_everything_and_asks_for_a_start():
    schedule = Schedule(per_tick=7)
    schedule.seq = 12
    schedule.put("A", 1)
    schedule.inactive.add("B")
    schedule.reset()
    assert not schedule.started and len(schedule) == 0 and not schedule.inactive
    assert schedule.per_tick == 7 and schedule.pop_due(10) == []


def test_a_wave_is_spread_over_the_ticks_given_and_urgent_looks_never_wait():
    """10,000 authids due at once (their minutes of use end together, #16), each due again
    60 ticks after its look, with a spread of 50 ticks: ~240 looks a tick (1.2 x 10,000 /
    50), every one looked at within 50 ticks, urgent ones all in their tick; a small wave
    is taken at once (`least`), and never more than `per_tick`."""
    schedule = Schedule(per_tick=250, spread=50, least=150)
    for i in range(10_000):
        schedule.put(f"R{i:05}", 1000)
    schedule.put("U0", 1000, URGENT)
    assert schedule.budget() == 241            # 10,001 scheduled
    sizes, seen, now = [], set(), 1000
    while len(seen) < 10_000:
        got = schedule.pop_due(now)
        assert got[0] == ("U0" if now == 1000 else "U1")
        sizes.append(len(got) - 1)
        seen.update(got[1:])
        for authid in got[1:]:
            schedule.put(authid, now + 60)     # its next minute of use
        now += 1
        schedule.put("U1", now, URGENT)
    assert len(sizes) <= 50 and max(sizes) <= 241 and min(sizes[:-1]) >= 200
    small = Schedule(per_tick=250, spread=50, least=150)
    for i in range(150):
        small.put(f"R{i}", 10, SOON if i % 2 else REGULAR)
    assert len(small.pop_due(10)) == 150 and small.budget() == 150
    crowded = Schedule(per_tick=250, spread=5, least=150)
    for i in range(2000):
        crowded.put(f"R{i}", 10)
    assert crowded.budget() == 250 and len(crowded.pop_due(10)) == 250   # never above
