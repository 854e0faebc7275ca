"""Refusals per source address in a sliding window. Pure: no sockets, the clock is passed in.

firewalld feeds it every `access.refused` event; it answers whether that event made the
source cross the threshold. Crossing is reported once; a source that falls back below the
threshold (old refusals leaving the window) can cross, and be reported, again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Source:
    """One source address: times of its refusals still in the window, newest last."""
    times: deque[float] = field(default_factory=deque)
    over: bool = False   # True from crossing the threshold until the count falls below it


class RefusalCounter:
    """Counts refusals per source over the last `window` seconds."""

    def __init__(self, window: float, threshold: int, max_sources: int = 100_000) -> None:
        self.window = window
        self.threshold = threshold
        # a bound on memory when many addresses are refused once each
        self.max_sources = max_sources
        self.sources: dict[str, Source] = {}

    def add(self, source: str, now: float) -> bool:
        """Record one refusal of `source` at `now`; True when it just crossed the threshold."""
        entry = self.sources.pop(source, None) or Source()
        self.sources[source] = entry   # re-inserted last: dict order is least recent first
        self._expire(entry, now)
        entry.times.append(now)
        if len(entry.times) > self.threshold:
            entry.times.popleft()      # only the last `threshold` times can matter
        if len(self.sources) > self.max_sources:
            del self.sources[next(iter(self.sources))]
        if not entry.over and len(entry.times) >= self.threshold:
            entry.over = True          # below -> over: report once
            return True
        return False

    def count(self, source: str, now: float) -> int:
        """Refusals of `source` in the window ending at `now` (capped at the threshold)."""
        entry = self.sources.get(source)
        if entry is None:
            return 0
        self._expire(entry, now)
        return len(entry.times)

    def prune(self, now: float) -> int:
        """Forget sources with no refusal in the window; returns how many were dropped."""
        cutoff = now - self.window
        stale = [s for s, e in self.sources.items() if not e.times or e.times[-1] <= cutoff]
        for source in stale:
            del self.sources[source]
        return len(stale)

    def _expire(self, entry: Source, now: float) -> None:
        while entry.times and entry.times[0] <= now - self.window:
            entry.times.popleft()
        if entry.over and len(entry.times) < self.threshold:
            entry.over = False         # over -> below: may be reported again
