"""paymentd's watch schedule (issue #16): which wallet step is due when. A clock moved by
hand; no wallet, no sockets."""

from __future__ import annotations

import pytest

from services.paymentd.schedule import (
    MAX_BACKOFF,
    PUSHED_REFRESH_INTERVAL,
    Step,
    WatchSchedule,
)


def run(schedule: WatchSchedule, until: float, cost: float = 0.045,
        start: float = 0.0) -> list[tuple[float, Step]]:
    """Drive the schedule like paymentd's loop: wake when due, run the step (taking
    `cost` seconds), report it done. Returns (start time, step) of each step."""
    now, steps = start, []
    while now < until:
        step = schedule.due(now)
        if step is None:
            now = max(now, schedule.wake_at())
            continue
        steps.append((round(now, 6), step))
        now += cost
        schedule.done(step, now)
    return steps


def test_first_a_scan_then_pool_listings_by_deadline():
    schedule = WatchSchedule(poll_interval=0.1, refresh_interval=2.0, now=0.0)
    steps = run(schedule, until=0.99)
    assert steps[0] == (0.0, Step.SCAN)
    pools = [t for t, s in steps if s is Step.POOL]
    # by deadline, not "sleep an interval after the listing": one interval after the
    # scan ended, then every 0.1 s although each listing takes 45 ms
    assert pools == pytest.approx([0.045 + 0.1 * i for i in range(1, 10)])


def test_a_listing_slower_than_the_interval_is_followed_at_once_not_queued():
    schedule = WatchSchedule(poll_interval=0.1, refresh_interval=100.0, now=0.0)
    steps = run(schedule, until=1.0, cost=0.25)
    starts = [t for t, _ in steps]
    # the scan ends at 0.25, the first listing is due at 0.35; each later one starts as
    # the one before ends
    assert starts == pytest.approx([0.0, 0.35, 0.6, 0.85])


def test_refresh_every_refresh_interval_without_a_daemon_publisher():
    schedule = WatchSchedule(poll_interval=0.1, refresh_interval=2.0, now=0.0)
    steps = run(schedule, until=6.5)
    refreshes = [t for t, s in steps if s is Step.REFRESH]
    assert len(refreshes) == 3
    assert refreshes[0] == pytest.approx(2.045)
    # one refresh_interval after the last one ended (plus at most one listing's time)
    assert all(2.045 <= b - a <= 2.1 for a, b in zip(refreshes, refreshes[1:], strict=False))


def test_a_block_wants_a_scan_at_once():
    schedule = WatchSchedule(poll_interval=0.1, refresh_interval=2.0, now=0.0)
    run(schedule, until=0.5)
    schedule.want_scan()
    assert schedule.due(0.51) is Step.SCAN
    assert schedule.wake_at() < 0.51
    schedule.done(Step.SCAN, 0.6)
    assert schedule.due(0.6) is None, "the scan listed the pool too"
    assert schedule.wake_at() == pytest.approx(0.7)


def test_a_connected_publisher_replaces_the_timed_refresh_by_a_rare_one():
    schedule = WatchSchedule(poll_interval=0.1, refresh_interval=2.0, now=0.0)
    run(schedule, until=0.5)
    schedule.daemon_pushes(True, 0.5)
    assert schedule.due(0.5) is Step.SCAN, "blocks may have come while nobody listened"
    steps = run(schedule, until=20.0, start=0.5)
    assert [s for _, s in steps].count(Step.REFRESH) == 0
    steps = run(schedule, until=PUSHED_REFRESH_INTERVAL + 1.0, start=20.0)
    assert [s for _, s in steps].count(Step.REFRESH) == 1
    # the publisher goes away: timed refreshes again within refresh_interval
    now = PUSHED_REFRESH_INTERVAL + 1.0
    schedule.daemon_pushes(False, now)
    steps = run(schedule, until=now + 2.1, start=now)
    assert [s for _, s in steps].count(Step.REFRESH) == 1


def test_failures_back_off_to_the_cap_then_retry_as_a_scan():
    """Issue #14: a wallet that comes back is tried again within MAX_BACKOFF (<= 2 s)."""
    schedule = WatchSchedule(poll_interval=0.1, refresh_interval=2.0, now=0.0)
    now, gaps = 0.0, []
    for _ in range(30):
        assert schedule.due(now) is Step.SCAN
        schedule.failed(now)
        assert schedule.due(now) is None
        gaps.append(schedule.wake_at() - now)
        now = schedule.wake_at()
    assert gaps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(gaps) == pytest.approx(MAX_BACKOFF) and MAX_BACKOFF <= 2.0
    # the wallet answers again: one scan, then pool listings every interval
    assert schedule.due(now) is Step.SCAN
    schedule.done(Step.SCAN, now + 0.2)
    assert (schedule.failures, schedule.scan_wanted) == (0, False)
    assert schedule.due(now + 0.2) is None
    assert schedule.due(now + 0.31) is Step.POOL
