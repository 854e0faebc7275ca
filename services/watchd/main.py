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
from services.watchd.heartbeats import HeartbeatBook

log = logging.getLogger(__name__)


class Watchd(Daemon):
    name = "watchd"
    prefixes = [""]   # everything: heartbeats, and every message is counted

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        super().__init__(config, ctx, ledger)
        self.heartbeats = HeartbeatBook()
        self.control.answer(GetHeartbeats, self.on_heartbeats)

    def on_message(self, env: Envelope) -> None:
        if isinstance(env.message, NodeHeartbeat):
            self.heartbeats.seen(env)

    def on_heartbeats(self, _req: GetHeartbeats, _asked: Asked) -> Heartbeats:
        return Heartbeats(interval=self.config.bus.heartbeat_interval,
                          daemons=self.heartbeats.entries())

    def status_details(self) -> dict:
        return {"heard": len(self.heartbeats.beats)}


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Watchd, argv, description="Watch the node: heartbeats, Prometheus "
                      "metrics and the audit log.")


if __name__ == "__main__":
    raise SystemExit(main())
