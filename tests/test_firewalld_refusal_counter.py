"""firewalld's refusal counter: a sliding window per source, on a clock moved by hand."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.firewalld.refusal_counter import RefusalCounter


def test_crossing_the_threshold_is_reported_once():
    counter = RefusalCounter(window=60, threshold=3)
    assert [counter.add("127.0.0.2", t) for t in (0, 1, 2, 3, 4)] == \
        [False, False, True, False, False]
    assert counter.count("127.0.0.2", 4) == 3


def test_sources_are_counted_apart():
    counter = RefusalCounter(window=60, threshold=2)
    assert counter.add("127.0.0.2", 0) is False
    assert counter.add("127.0.0.3", 0) is False
    assert counter.add("127.0.0.2", 1) is True
    assert counter.count("127.0.0.3", 1) == 1


def test_old_refusals_leave_the_window():
    counter = RefusalCounter(window=10, threshold=3)
    for t in (0, 1):
        counter.add("127.0.0.2", t)
    assert counter.add("127.0.0.2", 10.5) is False   # the one at 0 has left: 2 in window
    assert counter.count("127.0.0.2", 10.5) == 2
    assert counter.add("127.0.0.2", 10.6) is True


def test_a_source_falling_below_can_cross_again():
    counter = RefusalCounter(window=10, threshold=2)
    assert counter.add("127.0.0.2", 0) is False
    assert counter.add("127.0.0.2", 1) is True
    assert counter.add("127.0.0.2", 30) is False     # both left the window
    assert counter.add("127.0.0.2", 31) is True      # a second crossing, reported again


def test_prune_forgets_quiet_sources_only():
    counter = RefusalCounter(window=10, threshold=5)
    counter.add("127.0.0.2", 0)
    counter.add("127.0.0.3", 8)
    assert counter.prune(12) == 1
    assert set(counter.sources) == {"127.0.0.3"}


def test_memory_is_bounded():
    counter = RefusalCounter(window=60, threshold=5, max_sources=100)
    for n in range(1000):
        counter.add(f"10.0.{n // 256}.{n % 256}", n / 1000)
    assert len(counter.sources) == 100
    assert "10.0.3.231" in counter.sources           # the most recent are kept


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=200),
       st.integers(min_value=1, max_value=10), st.floats(min_value=0.5, max_value=100))
def test_reports_match_a_brute_force_count(times, threshold, window):
    """Reported exactly when the refusals in (t - window, t] reach the threshold and the
    previous refusal's window held fewer (or the source was never over since)."""
    counter = RefusalCounter(window=window, threshold=threshold)
    seen: list[float] = []
    over = False
    for t in sorted(times):
        seen.append(t)
        in_window = [s for s in seen if s > t - window]
        before = [s for s in seen[:-1] if s > t - window]
        if over and len(before) < threshold:
            over = False
        expected = not over and len(in_window) >= threshold
        over = over or expected
        assert counter.add("127.0.0.2", t) is expected
