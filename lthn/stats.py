"""A daemon's own counters, gauges and histograms, handed to watchd on request (issue #19).

Each daemon process counts what only it sees (wallet polls, status answers and how long
they took, requests answered) in a `Stats` built by the daemon loop; watchd asks every
process with `daemon.metrics` when Prometheus scrapes and exposes the answers with a
`process` label. Plain data, no Prometheus objects here: one registry (watchd's) renders
everything. Thread-safe: authd's status answerer counts from its own thread.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

# seconds; decisions are answered from the ledger in about a millisecond
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


def label_text(labels: dict[str, str] | None) -> str:
    """{"decision": "OK"} -> "decision=OK" (sorted; the wire form of a label set)."""
    if not labels:
        return ""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_label_text(text: str) -> dict[str, str]:
    if not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(","))


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, dict[str, float]] = {}
        self.gauges: dict[str, dict[str, float]] = {}
        self.histograms: dict[str, dict[str, dict[str, Any]]] = {}

    def count(self, name: str, labels: dict[str, str] | None = None, by: float = 1) -> None:
        key = label_text(labels)
        with self.lock:
            series = self.counters.setdefault(name, {})
            series[key] = series.get(key, 0) + by

    def gauge(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self.lock:
            self.gauges.setdefault(name, {})[label_text(labels)] = value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None,
                buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        key = label_text(labels)
        with self.lock:
            series = self.histograms.setdefault(name, {})
            h = series.get(key)
            if h is None:
                h = series[key] = {"bounds": list(buckets), "counts": [0] * len(buckets),
                                   "sum": 0.0, "count": 0}
            i = bisect.bisect_left(h["bounds"], value)
            if i < len(h["counts"]):
                h["counts"][i] += 1
            h["sum"] += value
            h["count"] += 1

    def snapshot(self) -> dict[str, Any]:
        """Plain maps for the `daemon.metrics` reply; histogram buckets cumulative."""
        with self.lock:
            histograms = {}
            for name, series in self.histograms.items():
                out = {}
                for key, h in series.items():
                    running, buckets = 0, []
                    for bound, n in zip(h["bounds"], h["counts"], strict=True):
                        running += n
                        buckets.append([bound, running])
                    out[key] = {"buckets": buckets, "sum": h["sum"], "count": h["count"]}
                histograms[name] = out
            return {"counters": {n: dict(s) for n, s in self.counters.items()},
                    "gauges": {n: dict(s) for n, s in self.gauges.items()},
                    "histograms": histograms}
