"""Python's cyclic garbage collected between ticks, not in the middle of one (#16).

With 10,000 live sessions a full collection walks every object the session book, the
schedule and the table reader hold: 20-40 ms that the automatic collector started in
about one tick in twenty (bench/bench_scale.py's tick p99). `lthn-sessiond` turns the
automatic collector off (main.py); after each tick the young generation is collected,
and every generation every `full_every` ticks, each full collection logged with its
time.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

FULL_EVERY = 30   # ticks between full collections


class TickCollector:
    def __init__(self, full_every: int = FULL_EVERY) -> None:
        self.full_every = full_every
        self.ticks = 0

    def after_tick(self) -> None:
        self.ticks += 1
        if self.ticks % self.full_every:
            gc.collect(0)
            return
        began = time.perf_counter()
        found = gc.collect()
        log.debug("garbage collected: %d unreachable, %.1f ms", found,
                  (time.perf_counter() - began) * 1000)
