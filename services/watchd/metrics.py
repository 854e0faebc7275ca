"""The Prometheus text endpoint (issue #19), served by watchd with `prometheus_client`.

Every scrape builds its answer fresh from three places, in the scrape's own thread:
- the ledger (a read-only look): payments and their amounts by state, authids by state,
  open sessions per service and kind, bans in force, outbox depth;
- what watchd counted on the bus since it started: messages per topic, refusals per
  reason (`access.refused`), messages dropped as malformed; heartbeats (`lthn_daemon_up`);
- each daemon process's own counters, asked with `daemon.metrics` (wallet polls, errors
  and height from paymentd; status decisions and their latency from authd; requests
  answered by everyone), with a `process` label. A process that does not answer within
  `ASK_TIMEOUT` is `lthn_daemon_answering 0` and its series are left out of that scrape.

Money is in atomic units (`_atomic` in the name), times in seconds.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from lthn import control
from lthn.bus import Envelope
from lthn.config import Config
from lthn.ledger import Ledger
from lthn.messages import AccessRefused
from lthn.requests import GetMetrics
from lthn.stats import parse_label_text
from services.watchd.heartbeats import HeartbeatBook, is_up

log = logging.getLogger(__name__)

ASK_TIMEOUT = 1.0


class BusCounts:
    """What watchd saw on the bus since it started (the loop thread writes, the scrape
    thread reads copies)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    def seen(self, env: Envelope) -> None:
        with self.lock:
            self.topics[env.topic] += 1
            if isinstance(env.message, AccessRefused):
                self.refusals[env.message.reason] += 1

    def copy(self) -> tuple[dict[str, int], dict[str, int]]:
        with self.lock:
            return dict(self.topics), dict(self.refusals)


class NodeCollector(Collector):
    def __init__(self, config: Config, bus: BusCounts, heartbeats: HeartbeatBook,
                 dropped: Callable[[], int], open_ledger: Callable[[Path], Ledger]) -> None:
        self.config = config
        self.bus = bus
        self.heartbeats = heartbeats
        self.dropped = dropped
        self.open_ledger = open_ledger

    def collect(self) -> Iterator[Metric]:
        yield from self.from_ledger()
        yield from self.from_bus()
        processes = yield from self.from_heartbeats()
        yield from self.from_daemons(processes)

    # --- the ledger ---
    def from_ledger(self) -> Iterator[Metric]:
        ledger = self.open_ledger(self.config.ledger_path)
        try:
            payments = ledger.payment_totals()
            authids = ledger.count_authids()
            sessions = ledger.count_open_sessions()
            bans = len(ledger.bans())
            outbox = ledger.outbox_counts()
        finally:
            ledger.close()
        count = GaugeMetricFamily("lthn_payments", "Payments in the ledger, by state "
                                  "(pool, mined, revoked, ...)", labels=["state"])
        amount = GaugeMetricFamily("lthn_payments_amount_atomic", "Amount of the payments "
                                   "in the ledger, by state, in atomic units",
                                   labels=["state"])
        for state, (n, total) in sorted(payments.items()):
            count.add_metric([state], n)
            amount.add_metric([state], total)
        yield count
        yield amount
        states = GaugeMetricFamily("lthn_authids", "Authids by state", labels=["state"])
        for state in sorted({"PENDING", "ACTIVE", "DEPLETED"} | set(authids)):
            states.add_metric([state], authids.get(state, 0))
        yield states
        live = GaugeMetricFamily("lthn_sessions_open", "Open sessions per service and kind",
                                 labels=["service", "kind"])
        for (service, kind), n in sorted(sessions.items()):
            live.add_metric([service, kind], n)
        yield live
        yield GaugeMetricFamily("lthn_bans", "Bans in force", value=bans)
        depth = GaugeMetricFamily("lthn_outbox_depth", "Bus messages committed in the ledger "
                                  "and not yet published: queued, or stuck (undecodable, "
                                  "kept; see lthnctl outbox)", labels=["state"])
        depth.add_metric(["queued"], outbox.queued)
        depth.add_metric(["stuck"], outbox.stuck)
        yield depth

    # --- the bus, as watchd saw it ---
    def from_bus(self) -> Iterator[Metric]:
        topics, refusals = self.bus.copy()
        messages = CounterMetricFamily("lthn_bus_messages", "Bus messages watchd received, "
                                       "by topic", labels=["topic"])
        for topic, n in sorted(topics.items()):
            messages.add_metric([topic], n)
        yield messages
        refused = CounterMetricFamily("lthn_refusals", "Refused client requests "
                                      "(access.refused), by reason", labels=["reason"])
        for reason, n in sorted(refusals.items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily("lthn_bus_dropped", "Malformed, unknown or oversized bus "
                                  "messages watchd dropped", value=self.dropped())

    def from_heartbeats(self) -> Iterator[Metric]:
        """Up and heartbeat age per process; returns the processes to ask for metrics."""
        interval = self.config.bus.heartbeat_interval
        up = GaugeMetricFamily("lthn_daemon_up", "1 when the process's last heartbeat is "
                               "at most two intervals old", labels=["process"])
        age = GaugeMetricFamily("lthn_daemon_heartbeat_age_seconds", "Seconds since the "
                                "process's last heartbeat", labels=["process"])
        entries = self.heartbeats.entries()
        for entry in entries:
            up.add_metric([entry["process"]], 1 if is_up(entry["age"], interval) else 0)
            age.add_metric([entry["process"]], entry["age"])
        yield up
        yield age
        return [e["process"] for e in entries]

    # --- each daemon's own counters ---
    def from_daemons(self, processes: list[str]) -> Iterator[Metric]:
        ctx = zmq.Context()
        try:
            answers = control.ask_many(ctx, self.config.state,
                                       {p: (p, GetMetrics()) for p in processes}, ASK_TIMEOUT)
        finally:
            ctx.destroy(linger=0)
        answering = GaugeMetricFamily("lthn_daemon_answering", "1 when the process answered "
                                      "this scrape's daemon.metrics", labels=["process"])
        families: dict[str, Metric] = {}
        for process, answer in sorted(answers.items()):
            ok = not isinstance(answer, Exception)
            answering.add_metric([process], 1 if ok else 0)
            if ok:
                add_daemon_series(families, process, answer.metrics)
            else:
                log.debug("metrics: %s", answer)
        yield answering
        yield from families.values()


def add_daemon_series(families: dict[str, Metric], process: str,
                      snapshot: dict[str, Any]) -> None:
    """One process's `daemon.metrics` snapshot into Prometheus families (lthn_<name>)."""
    # counters and gauges differ only in their family class, name and help text
    simple = (("counters", CounterMetricFamily, "counted by each daemon process"),
              ("gauges", GaugeMetricFamily, "as each daemon process sees it"))
    for kind, family_class, doc in simple:
        for name, series in sorted(snapshot.get(kind, {}).items()):
            base = "lthn_" + (name.removesuffix("_total") if kind == "counters" else name)
            for key, value in sorted(series.items()):
                labels = {"process": process} | parse_label_text(key)
                family = families.get(base)
                if family is None:
                    family = families[base] = family_class(
                        base, f"{name} {doc}", labels=sorted(labels))
                family.add_metric([labels[k] for k in sorted(labels)], value)
    for name, series in sorted(snapshot.get("histograms", {}).items()):
        base = "lthn_" + name
        for key, h in sorted(series.items()):
            labels = {"process": process} | parse_label_text(key)
            family = families.get(base)
            if family is None:
                family = families[base] = HistogramMetricFamily(
                    base, f"{name} observed by each daemon process", labels=sorted(labels))
            buckets = [(_le(bound), n) for bound, n in h["buckets"]] + [("+Inf", h["count"])]
            family.add_metric([labels[k] for k in sorted(labels)], buckets, h["sum"])


def _le(bound: float) -> str:
    return repr(float(bound))


class MetricsServer:
    """The HTTP endpoint: prometheus_client's server in its own thread."""

    def __init__(self, config: Config, collector: NodeCollector) -> None:
        from prometheus_client import start_http_server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.httpd, self.thread = start_http_server(config.metrics.port, config.metrics.bind,
                                                    registry=self.registry)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
