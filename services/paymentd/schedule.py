"""When paymentd asks the wallet what (issue #16). Pure: the clock is passed in.

Three steps, cheapest first:
  POOL     list the wallet's pool only, every `poll_interval` (0.1 s by default). Needs no
           refresh: the wallet fetches the daemon's pool itself. Measured on regtest: ~45 ms
           a listing, 0.5% of a core for monero-wallet-rpc and 0.4% for monerod at 0.1 s.
  REFRESH  make the wallet read new blocks and ask its height; a SCAN follows at once when
           the height moved. Every `refresh_interval`, or only as a safety net while the
           daemon's ZMQ publisher tells us of every block.
  SCAN     refresh, height, then list mined transfers above the scan height and the pool,
           and ask about watched payments the list no longer shows. Wanted at start, after
           the wallet was down, when a block arrives, and when a payment left the pool.

Deadlines, not sleeps: the next listing is due one interval after the last one was due,
however long the listing took. A failed step is retried as a SCAN after a backoff that
doubles from the poll interval and stops at MAX_BACKOFF, so a wallet that comes back is
seen within that (issue #14: it had grown to 30 s and payments waited 20 s for it).
"""

from __future__ import annotations

import enum

MAX_BACKOFF = 1.5
# while the daemon pushes blocks, a refresh still runs this often: a block published while
# the subscription was reconnecting is never missed for long
PUSHED_REFRESH_INTERVAL = 30.0


class Step(enum.Enum):
    SCAN = "scan"
    REFRESH = "refresh"
    POOL = "pool"


class WatchSchedule:
    """The deadlines of one wallet watch."""

    def __init__(self, poll_interval: float, refresh_interval: float, now: float) -> None:
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        self.pool_at = now
        self.refresh_at = now + refresh_interval
        self.retry_at = now
        self.scan_wanted = True      # the first step reads everything since the scan height
        self.failures = 0
        self.pushed = False          # the daemon's ZMQ publisher is connected

    @property
    def refresh_period(self) -> float:
        return PUSHED_REFRESH_INTERVAL if self.pushed else self.refresh_interval

    def due(self, now: float) -> Step | None:
        """The step to run now, or None when nothing is due yet."""
        if self.failures:
            return Step.SCAN if now >= self.retry_at else None
        if self.scan_wanted:
            return Step.SCAN
        if now >= self.refresh_at:
            return Step.REFRESH
        if now >= self.pool_at:
            return Step.POOL
        return None

    def wake_at(self) -> float:
        """When the next step is due (maybe already past)."""
        if self.failures:
            return self.retry_at
        if self.scan_wanted:
            return float("-inf")
        return min(self.refresh_at, self.pool_at)

    def backoff(self) -> float:
        """Seconds before the next try after `failures` failed steps in a row."""
        if not self.failures:
            return 0.0
        return min(MAX_BACKOFF, self.poll_interval * 2 ** min(self.failures - 1, 16))

    # --- what happened ---

    def done(self, step: Step, now: float) -> None:
        """`step` worked; it ended at `now`. Every step lists the pool."""
        self.failures = 0
        if step is Step.POOL:
            # by deadline: a slow listing does not push the next one back; a listing
            # slower than the interval is followed by the next at once, never by a queue
            self.pool_at = max(self.pool_at + self.poll_interval, now)
            return
        if step is Step.SCAN:
            self.scan_wanted = False
        self.refresh_at = now + self.refresh_period
        # a scan or refresh ran off the listing schedule and listed the pool as it ended
        self.pool_at = now + self.poll_interval

    def failed(self, now: float) -> None:
        """A step failed at `now`: retry (as a SCAN: blocks may have come) after a backoff."""
        self.failures += 1
        self.scan_wanted = True
        self.retry_at = now + self.backoff()

    def want_scan(self) -> None:
        """A block arrived, or a payment left the pool (mined or dropped: only a refresh
        tells which)."""
        self.scan_wanted = True

    def daemon_pushes(self, pushed: bool, now: float) -> None:
        """The daemon's ZMQ publisher connected (blocks arrive as they come) or went away
        (back to refreshing every refresh_interval)."""
        if pushed == self.pushed:
            return
        self.pushed = pushed
        if pushed:
            # blocks may have come while nobody listened
            self.scan_wanted = True
        else:
            self.refresh_at = min(self.refresh_at, now + self.refresh_interval)
