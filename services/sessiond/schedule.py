"""When sessiond next looks at each active authid (#16): memory that only says *when*.

A tick does not read every active authid. An authid is looked at (its ledger row read,
its time charged, its next look planned, `charging.next_look`) at one of three levels:
- URGENT, every one due in the tick: its balance is about to run out (so it is
  deactivated in the same tick as when every tick charged every authid), or the ledger
  changed a live one (a revocation);
- SOON: its session opened or closed, or the ledger changed one whose time runs without
  a session (wallclock billing);
- REGULAR: the minute of use it is charging ended, or its idle grace, or its wait for a
  first session (`Tx.authids_waiting_to_spend`).
SOON and REGULAR share a budget of looks a tick, SOON first: enough to look at every
scheduled authid once in `spread` ticks (sessiond: the ticks of one `charge_interval`)
with a fifth to spare, at least `least` and at most `per_tick`. With 10,000 live
sessions each is due once a minute (~170 looks a second); their minutes of use end
together when they opened together, and that wave is spread over 5/6 of the minute
(~200 looks a tick) instead of taking `per_tick` every tick for 40 s (#16), so a tick
stays short and bounded when thousands of sessions open at once. The price: at that
scale a look comes up to ~50 s after its minute ended (~40 s at `per_tick`).
A look that comes a few ticks late (thousands of clients reconnecting at once) charges
the same: charging covers the time from the ledger's `last_used` to now. Losing this
memory (a restart, `control.resync`) loses nothing: it is planned from the ledger again.
"""

from __future__ import annotations

import heapq

URGENT, SOON, REGULAR = 0, 1, 2
LEVELS = (URGENT, SOON, REGULAR)


class Schedule:
    def __init__(self, per_tick: int = 250, spread: int = 1, least: int = 150) -> None:
        self.per_tick = per_tick
        self.spread = max(1, spread)
        self.least = least
        self.seq: int | None = None          # ledger changes read up to; None: not started
        self.due: dict[str, tuple[int, int]] = {}          # authid -> (ms, level)
        self.heaps: list[list[tuple[int, str]]] = [[] for _ in LEVELS]
        self.inactive: set[str] = set()      # live authids the ledger calls not active

    @property
    def started(self) -> bool:
        return self.seq is not None

    def reset(self) -> None:
        """Forget everything; the next tick plans every active authid from the ledger."""
        self.seq = None
        self.due.clear()
        self.heaps = [[] for _ in LEVELS]
        self.inactive.clear()

    def put(self, authid: str, at: int | None, level: int = REGULAR) -> None:
        """The authid's next look is `at` (ms), or never (None) until something happens."""
        if at is None:
            self.due.pop(authid, None)
            return
        self.due[authid] = (at, level)
        heapq.heappush(self.heaps[level], (at, authid))
        self._compact(level)

    def soon(self, authid: str, at: int, level: int = URGENT) -> None:
        """Look at the authid no later than `at`, at `level` or a more urgent one it has."""
        current = self.due.get(authid)
        if current is not None and current[0] <= at and current[1] <= level:
            return
        if current is not None:
            at, level = min(current[0], at), min(current[1], level)
        self.put(authid, at, level)

    def pop_due(self, now: int) -> list[str]:
        """The authids to look at now: every urgent one due, then SOON and REGULAR ones
        due, oldest first, `budget()` of them at most. Each leaves the schedule until put
        again."""
        budget = self.budget()
        out = self._pop(URGENT, now, None)
        for level in (SOON, REGULAR):
            taken = self._pop(level, now, budget)
            budget -= len(taken)
            out += taken
        return out

    def budget(self) -> int:
        """SOON and REGULAR looks a tick may take now (see the module's docstring)."""
        wanted = -(-len(self.due) * 6 // (5 * self.spread))     # ceil(1.2 * due / spread)
        return min(self.per_tick, max(self.least, wanted))

    def _pop(self, level: int, now: int, limit: int | None) -> list[str]:
        heap, out = self.heaps[level], []
        while heap and heap[0][0] <= now and (limit is None or len(out) < limit):
            at, authid = heapq.heappop(heap)
            if self.due.get(authid) == (at, level):   # else a stale entry: replaced
                del self.due[authid]
                out.append(authid)
        return out

    def _compact(self, level: int) -> None:
        if len(self.heaps[level]) > 2 * len(self.due) + 1024:
            self.heaps[level] = [(at, a) for a, (at, lv) in self.due.items() if lv == level]
            heapq.heapify(self.heaps[level])

    def __len__(self) -> int:
        return len(self.due)
