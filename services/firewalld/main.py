"""lthn-firewalld: counts refused requests per source address and reports heavy offenders.

What it does now: subscribes to `access.refused` (published by authd for every refusal,
with the client's real source address; what each refusal's code means for firewalld is
its `RefusalKind` in lthn/refusals.py), keeps a per-source count of refusals in a
sliding window (`firewall.refusal_window` seconds) and logs one line when a source
reaches `firewall.refusal_threshold`:

    source 127.0.0.2: 20 refusals in 60 s (threshold 20); no ban applied: bans are not
    implemented yet

It also owns bans made by hand (`lthnctl ban add|del`, manual_bans.py): it stores them in
the ledger's `bans` table with an audit line, publishes `ban.added` / `ban.lifted`, and
`ban.lifted` (expired) when one runs out.

What it does NOT do yet (issue #17, see ROADMAP "firewalld"): it enforces no ban and bans
nobody by itself. No source allow/deny lists, no destination deny lists, no per-source
rate limits, nothing applied at haproxy, OpenVPN or nftables. The counts live in
memory only and start from zero after a restart.
"""

from __future__ import annotations

import logging
import time

import zmq

from lthn.bus import Envelope
from lthn.config import Config
from lthn.daemon import Daemon, run_daemon
from lthn.ledger import Ledger
from lthn.messages import AccessRefused
from lthn.refusals import Refusal
from lthn.requests import AddBan, LiftBan
from services.firewalld.manual_bans import ManualBans
from services.firewalld.refusal_counter import RefusalCounter

log = logging.getLogger(__name__)


class Firewalld(Daemon):
    name = "firewalld"
    prefixes = ["access.refused"]

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        super().__init__(config, ctx, ledger)
        # bans by hand (issue #19): stored, listed and published; enforced by issue #17
        self.bans = ManualBans(ledger)
        self.control.answer(AddBan, self.bans.add)
        self.control.answer(LiftBan, self.bans.lift)
        self.timers.every(1.0, self.bans.sweep, first=1.0)

    def status_details(self) -> dict:
        return {"bans": len(self.ledger.bans())}

    def start(self) -> None:
        settings = self.config.firewall
        self.clock = time.monotonic
        self.refusals = RefusalCounter(settings.refusal_window, settings.refusal_threshold)
        self.timers.every(settings.refusal_window, self.prune, first=settings.refusal_window)
        log.info("firewalld: counting refusals per source (threshold %d in %g s); "
                 "bans are not implemented yet", settings.refusal_threshold,
                 settings.refusal_window)

    def on_message(self, env: Envelope) -> None:
        msg = env.message
        if not isinstance(msg, AccessRefused):
            return
        source = msg.source or "?"
        refusal = Refusal.of(msg.reason)
        # every refusal is counted for now; bans (issue #17) will count only the kinds
        # that may ban (`RefusalKind.may_ban`: never NO_PAYMENT)
        log.debug("source %s: refused (%s, %s) from %s", source, msg.reason,
                  refusal.kind.value if refusal else "unknown code", env.sender)
        if self.refusals.add(source, self.clock()):
            log.warning("source %s: %d refusals in %g s (threshold %d); no ban applied: "
                        "bans are not implemented yet", source, self.refusals.threshold,
                        self.refusals.window, self.refusals.threshold)

    def prune(self) -> None:
        dropped = self.refusals.prune(self.clock())
        if dropped:
            log.debug("firewalld: forgot %d quiet sources", dropped)


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Firewalld, argv, description="Count refusals per source address.")


if __name__ == "__main__":
    raise SystemExit(main())
