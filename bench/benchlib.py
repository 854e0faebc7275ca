"""What every benchmark here shares: percentiles and waiting with a deadline.

Benchmarks run as scripts (`python bench/NAME.py`), so this is imported as `benchlib`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank p-th percentile of `values` (p in 0..100)."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll `check` until it returns something truthy; exit the bench after `timeout`.

    interval=0 polls flat out, for latency benches whose clock is the poll itself.
    OSError counts as "not up yet".
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError as exc:
            last = exc
        if interval:
            time.sleep(interval)
    raise SystemExit(f"bench: timed out after {timeout} s waiting for {what}"
                     + (f" (last error: {last!r})" if last else ""))


def keep_or_remove(work: Path, keep: bool) -> None:
    """A bench's work dir at its end: kept (and said where) with --keep, else removed."""
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def in_work_dir(prefix: str, keep: bool, body: Callable[[Path], None], note: str = "") -> int:
    """A bench's whole run: a new work dir (said, with the machine's CPUs and `note`, or
    its load average), `body(work)`, then the dir kept or removed, and the total."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.monotonic()
    note = note or f"load average {os.getloadavg()[0]:.2f}"
    print(f"work dir {work}; {os.cpu_count()} CPUs, {note}", flush=True)
    try:
        body(work)
    finally:
        keep_or_remove(work, keep)
    print_total(started)
    return 0


def print_total(started: float) -> None:
    """The run's length and the load it ended at (other work skews every figure)."""
    print(f"\ntotal {time.monotonic() - started:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f} (other work on this machine skews every figure)")
