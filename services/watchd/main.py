"""lthn-watchd: watches the node for its operator (issue #19).

- records the last heartbeat of every daemon process and answers `watchd.heartbeats`
  (what `lthnctl status` shows as up or down);
- serves the Prometheus text endpoint (`metrics.bind`:`metrics.port`, `/metrics`);
- writes the audit log file (`audit.file`) from the ledger's audit table.
"""

from __future__ import annotations

import logging

import zmq

from lthn.bus import Envelope
from lthn.config import Config
from lthn.control import Asked
from lthn.daemon import Daemon, run_daemon
from lthn.ledger import Ledger
from lthn.messages import NodeHeartbeat
from lthn.requests import GetHeartbeats, Heartbeats
from services.watchd.audit_file import AuditFile
from services.watchd.heartbeats import HeartbeatBook
from services.watchd.metrics import BusCounts, MetricsServer, NodeCollector

log = logging.getLogger(__name__)

AUDIT_EVERY = 0.5   # seconds between looks at the ledger's audit table


class Watchd(Daemon):
    name = "watchd"
    prefixes = [""]   # everything: heartbeats, and every message is counted

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        super().__init__(config, ctx, ledger)
        self.heartbeats = HeartbeatBook()
        self.control.answer(GetHeartbeats, self.on_heartbeats)
        self.bus_counts = BusCounts()
        assert self.subscriber is not None
        subscriber = self.subscriber
        self.collector = NodeCollector(config, self.bus_counts, self.heartbeats,
                                       lambda: subscriber.dropped, Ledger.open_existing)
        self.metrics: MetricsServer | None = None
        self.metrics_trouble = ""
        self.audit = AuditFile(config, ledger)

    def start(self) -> None:
        if self.config.metrics.enabled:
            self.serve_metrics()
        log.info("watchd: audit log %s (%s), from audit row %d", self.audit.path,
                 "anonymised" if self.audit.anonymise else "in full", self.audit.last_id + 1)
        self.timers.every(AUDIT_EVERY, self.follow_audit)

    def follow_audit(self) -> None:
        written = self.audit.follow()
        if written:
            self.control.stats.count("audit_lines_written_total", by=written)

    def serve_metrics(self) -> None:
        """Listen for Prometheus; if the port is taken, say so once and retry every 10 s."""
        m = self.config.metrics
        try:
            self.metrics = MetricsServer(self.config, self.collector)
        except OSError as exc:
            trouble = exc.strerror or str(exc)
            if trouble != self.metrics_trouble:
                log.error("watchd: cannot serve metrics on %s:%d (%s); check metrics.port; "
                          "retrying every 10 s", m.bind, m.port, trouble)
                self.metrics_trouble = trouble
            self.timers.after(10.0, self.serve_metrics)
            return
        self.metrics_trouble = ""
        log.info("watchd: Prometheus metrics on http://%s:%d/metrics", m.bind, m.port)

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.follow_audit()   # what committed before the stop is in the file

    def on_message(self, env: Envelope) -> None:
        self.bus_counts.seen(env)
        if isinstance(env.message, NodeHeartbeat):
            self.heartbeats.seen(env)

    def on_heartbeats(self, _req: GetHeartbeats, _asked: Asked) -> Heartbeats:
        return Heartbeats(interval=self.config.bus.heartbeat_interval,
                          daemons=self.heartbeats.entries())

    def status_details(self) -> dict:
        return {"heard": len(self.heartbeats.beats),
                "metrics": f"{self.config.metrics.bind}:{self.config.metrics.port}"
                if self.metrics is not None else "off"}


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Watchd, argv, description="Watch the node: heartbeats, Prometheus "
                      "metrics and the audit log.")


if __name__ == "__main__":
    raise SystemExit(main())
