"""authd: admits paid authids at haproxy, answers client status, reports refusals.

main(): args -> config -> ledger, bus -> AuthDaemon.run(). What it does:
- keeps haproxy's runtime map equal to the ledger's active authids (map_sync.py);
- answers the client status request for haproxy (status_answer.py);
- turns haproxy's refused requests into `access.refused` events (refusal_events.py).
"""

from __future__ import annotations

import logging
import time

import zmq

from lthn.bus import Envelope
from lthn.config import Config
from lthn.daemon import Daemon, run_daemon
from lthn.haproxy import contract
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from lthn.messages import AuthidActivated, AuthidDeactivated, ControlResync
from services.authd.map_sync import MapSync
from services.authd.refusal_events import RefusalListener
from services.authd.status_answer import StatusAnswerer

log = logging.getLogger(__name__)

PROCESS_CHECK_SECONDS = 0.5  # a restarted haproxy is noticed (and resynced) this fast
CATCH_UP_SECONDS = 3.0       # the longest an inactive authid can stay admitted if a
                             # deactivation message is lost (issue #4)
FULL_RESYNC_SECONDS = 600.0  # the whole map against the ledger, for what no ledger change
                             # explains (#16: 100,000 authids are a 4 MB `show map`)


class AuthDaemon(Daemon):
    name = "authd"
    prefixes = ["authid.", "control."]

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        super().__init__(config, ctx, ledger)
        admin = HaproxyAdmin(contract.admin_socket_path(config), timeout=5.0)
        self.map_sync = MapSync(admin, contract.authid_map_path(config), ledger,
                                config.state / "run" / "authd-map.lock")
        self.status = StatusAnswerer(config, self.control.stats)
        self.refusals = RefusalListener(contract.refusal_log_port(config))

    def start(self) -> None:
        self.map_sync.check_process()  # first contact: resyncs when haproxy answers
        self.status.start()
        self.watch(self.refusals.fileno(), self.on_refusals)  # zmq polls plain fds by number
        self.timers.every(PROCESS_CHECK_SECONDS, self.map_sync.check_process,
                          first=PROCESS_CHECK_SECONDS)
        self.timers.every(CATCH_UP_SECONDS, self.map_sync.catch_up, first=CATCH_UP_SECONDS)
        self.timers.every(FULL_RESYNC_SECONDS, self.periodic_resync,
                          first=FULL_RESYNC_SECONDS)
        log.info("authd: status answerer on 127.0.0.1:%d, refusals from udp 127.0.0.1:%d",
                 self.config.proxy.status_port, contract.refusal_log_port(self.config))

    def reload(self) -> None:
        """SIGHUP: re-read the config, rebuild haproxy's list from the ledger at once."""
        super().reload()
        self.map_sync.resync("reload")

    def reloaded(self, old: Config) -> None:
        """The status answer reads the provider id and services from the new config."""
        self.status.server.config = self.config

    def refresh(self) -> str:
        done = self.map_sync.resync("asked")
        if done is None:
            return f"{self.control.process}: haproxy did not answer; map not resynced"
        return (f"{self.control.process}: resynced haproxy's map with the ledger "
                f"({done[0]} added, {done[1]} removed)")

    def periodic_resync(self) -> None:
        self.map_sync.resync("periodic")

    def on_message(self, env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, AuthidActivated | AuthidDeactivated):
            # the ledger decides, not the message: replays and reordering stay harmless
            self.map_sync.apply(msg.authid)
            if isinstance(msg, AuthidActivated):
                # committed activation -> in haproxy's map: how long admission takes (#19)
                self.control.stats.observe("admission_seconds", time.time() - env.ts)
        elif isinstance(msg, ControlResync):
            log.info("authd: resync asked by %s (%s)", env.sender, msg.reason)
            self.map_sync.resync("asked")

    def on_refusals(self) -> None:
        for refusal in self.refusals.drain():
            self.publish(refusal)

    def stop(self) -> None:
        self.unwatch(self.refusals.fileno())
        self.refusals.close()
        self.status.stop()
        self.map_sync.close()


def main(argv: list[str] | None = None) -> int:
    return run_daemon(AuthDaemon, argv, description="Run authd: haproxy admission, client "
                      "status answers and refusal events.")


if __name__ == "__main__":
    raise SystemExit(main())
