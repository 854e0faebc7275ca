"""sessiond: tracks sessions, charges time per tick, cuts what may no longer run (issue #4).

Every `sessions.tick` seconds, in one ledger transaction: each adapter's view of live
sessions is written to the session rows of its kind (proxy: haproxy's stick tables; vpn,
in VPN mode: lthn-vpnd's snapshot of OpenVPN's clients, issue #18), then the authids due
a look are charged (`charging.charge_tick`, `schedule.py`; #16). After the commit,
authids that ran dry are cut at once; so are authids deactivated by anyone else
(`authid.deactivated` on the bus), and live authids the ledger no longer calls active (a
missed message, a restart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from lthn import by_hand
from lthn.authid import short
from lthn.bus import Envelope
from lthn.config import Config
from lthn.control import Asked, Refused
from lthn.daemon import Daemon
from lthn.haproxy import contract
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from lthn.messages import AuthidDeactivated, ControlResync, SessionCut
from lthn.requests import AuthidChanged, KillSession, Revoke, SessionKilled, Spend
from services.sessiond import charging
from services.sessiond.collector import TickCollector
from services.sessiond.proxy_sessions import HaproxyTrouble, ProxyAdapter
from services.sessiond.schedule import Schedule
from services.sessiond.session_book import Observed, SessionBook
from services.sessiond.vpn_sessions import VpnAdapter, VpnTrouble

log = logging.getLogger(__name__)

# haproxy unreachable this long: its sessions are closed rather than charged on (#4)
OUTAGE_CLOSE_AFTER = 10.0


class Sessiond(Daemon):
    name = "sessiond"
    prefixes = ["authid.deactivated", "control.resync"]

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger,
                 adapter: ProxyAdapter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, ctx, ledger)
        self.tracking = config.sessions.tracking
        self.clock = clock
        self.adapter: ProxyAdapter | None = None
        if self.tracking:
            self.adapter = adapter or ProxyAdapter(
                HaproxyAdmin(contract.admin_socket_path(config), timeout=1.0))
        self.book = SessionBook("proxy", ledger.open_sessions("proxy"))
        self.collector = TickCollector()
        # VPN clients (issue #18): their own adapter and book, charged in the same tick
        self.vpn: VpnAdapter | None = None
        if self.tracking and config.vpn.enabled:
            self.vpn = VpnAdapter(config.vpn_clients_path, self.publish, wall=ledger.clock)
        self.vpn_book = SessionBook("vpn", ledger.open_sessions("vpn"))
        self.vpn_last_ok = clock()
        self.vpn_trouble = ""
        # what a run before #14 kept of the request log: haproxy itself says it now
        (config.state / "run" / "sessiond-clients.json").unlink(missing_ok=True)
        # a wave of minutes of use ending together is spread over the charge interval
        self.schedule = Schedule(spread=int(config.sessions.charge_interval /
                                            config.sessions.tick))
        self.rebuilt = False
        self.last_poll_ok = clock()
        self.trouble = ""              # the last haproxy problem logged (logged once)
        self.answered = False          # haproxy has answered once since the start
        self.control.answer(KillSession, self.on_kill)
        # money out and refusals by hand (issue #19): sessiond owns spending and cutting
        self.control.answer(Spend, lambda req, asked: by_hand.spend(ledger, config, req, asked))
        self.control.answer(Revoke, self.on_revoke)

    def start(self) -> None:
        if self.adapter is not None:
            log.info("sessiond: tracking proxy sessions in haproxy's stick tables")
        else:
            log.info("sessiond: session tracking is off; charging wallclock time")
            if self.book.open or self.vpn_book.open:
                # rows left open by a run that tracked: nobody will ever close them
                with self.ledger.transaction() as tx:
                    self.book.apply(tx, {}, gone_reason="tracking off")
                    self.vpn_book.apply(tx, {}, gone_reason="tracking off")
        if self.vpn is not None:
            log.info("sessiond: tracking VPN sessions (from %s)", self.config.vpn_clients_path)
        elif self.vpn_book.open:
            with self.ledger.transaction() as tx:
                self.vpn_book.apply(tx, {}, gone_reason="vpn mode off")
        self.timers.every(self.config.sessions.tick, self.tick)

    # --- the tick ---
    def changed(self) -> set[str] | None:
        """What the proxy adapter's last poll changed, or None (every observation) after
        the book was rebuilt from the ledger."""
        if self.rebuilt or self.adapter is None:
            self.rebuilt = False
            return None
        return self.adapter.changed

    def observe(self) -> dict[str, Observed] | None:
        """The adapter's live sessions, or None when haproxy cannot tell us now."""
        if self.adapter is None:
            return None
        try:
            live = self.adapter.poll(self.book.open)   # its keys: the refs open
        except HaproxyTrouble as exc:
            if str(exc) != self.trouble:
                # at the node's start haproxy comes up after sessiond: no warning until it
                # has answered once (issue #15)
                level = logging.WARNING if self.answered else logging.INFO
                log.log(level, "haproxy: %s; retrying every tick", exc)
                self.trouble = str(exc)
            return None
        self.answered = True
        if self.trouble:
            log.info("haproxy: answering again")
            self.trouble = ""
        self.last_poll_ok = self.clock()
        return live

    def observe_vpn(self) -> dict[str, Observed] | None:
        """lthn-vpnd's view of OpenVPN's clients, or None when it cannot tell us now."""
        if self.vpn is None:
            return None
        try:
            live = self.vpn.poll()
        except VpnTrouble as exc:
            if str(exc) != self.vpn_trouble:
                log.warning("vpn: %s; retrying every tick", exc)
                self.vpn_trouble = str(exc)
            return None
        if self.vpn_trouble:
            log.info("vpn: lthn-vpnd reports again")
            self.vpn_trouble = ""
        self.vpn_last_ok = self.clock()
        return live

    def tick(self) -> None:
        began, cpu = time.monotonic(), time.process_time()
        live = self.observe()
        vpn_live = self.observe_vpn()
        observed = time.monotonic()
        try:
            # charges of time in use: committed without waiting for the disk (see
            # Ledger.transaction); the next durable commit (a payment, a cut) syncs them
            with self.ledger.transaction(durable=False) as tx:
                before = self.book.authids | self.vpn_book.authids
                closed: set[str] = set()
                if live is not None:
                    closed = self.book.apply(tx, live, changed=self.changed())
                elif self.adapter is not None and self.book.open and \
                        self.clock() - self.last_poll_ok > OUTAGE_CLOSE_AFTER:
                    closed = self.book.apply(tx, {}, gone_reason="haproxy unavailable")
                if vpn_live is not None:
                    closed |= self.vpn_book.apply(tx, vpn_live)
                elif self.vpn is not None and self.vpn_book.open and \
                        self.clock() - self.vpn_last_ok > OUTAGE_CLOSE_AFTER:
                    closed |= self.vpn_book.apply(tx, {}, gone_reason="vpn unavailable")
                after = self.book.authids | self.vpn_book.authids
                result = charging.charge_tick(tx, self.config, self.schedule, after | closed,
                                              (after - before) | closed)
        except Exception:
            # rolled back: memory must not run ahead of the ledger (ids of rows never
            # written), so start again from what the ledger holds; retried next tick
            self.book = SessionBook("proxy", self.ledger.open_sessions("proxy"))
            self.vpn_book = SessionBook("vpn", self.ledger.open_sessions("vpn"))
            self.schedule.reset()
            self.rebuilt = True      # the next apply looks at every observation
            raise
        done = time.monotonic()
        log.debug("tick: %d live, %d looked at, %d charged, %d deactivated; %.1f ms "
                  "(haproxy %.1f, ledger %.1f; cpu %.1f)", len(after), result.looked,
                  len(result.charged), len(result.deactivated), (done - began) * 1000,
                  (observed - began) * 1000, (done - observed) * 1000,
                  (time.process_time() - cpu) * 1000)
        for authid in result.deactivated:
            log.info("authid %s: deactivated, credit exhausted", short(authid))
        cuts = dict.fromkeys(result.deactivated, "credit exhausted")
        for authid in (result.not_active & after) - set(result.deactivated):
            cuts[authid] = "not active"   # deactivated while we were not listening
        if cuts:
            self.cut(cuts)
            log.debug("tick: cut done %.1f ms after the tick began",
                      (time.monotonic() - began) * 1000)
        self.collector.after_tick()

    # --- lthnctl (issue #19) ---
    def status_details(self) -> dict:
        details = {"open_sessions": len(self.book.open) + len(self.vpn_book.open),
                   "tracking": self.tracking, "haproxy": self.trouble or "ok"}
        if self.vpn is not None:
            details["vpn"] = self.vpn_trouble or "ok"
        return details

    def on_revoke(self, req: Revoke, asked: Asked) -> AuthidChanged:
        """Refuse the authid (ledger) and cut its live sessions now."""
        done = by_hand.revoke(self.ledger, self.config, req, asked)
        if done.changed:
            self.cut({done.authid: f"revoked by {asked.actor}: {req.reason}"},
                     actor=asked.actor)
        return done

    def on_kill(self, req: KillSession, asked: Asked) -> SessionKilled:
        """Cut an open session's live connections now; the authid stays active, so its
        client may connect again (`authid revoke` refuses it for good)."""
        row = self.ledger.session(req.session_id)
        if row is None:
            raise Refused(f"session {req.session_id}: not in the ledger")
        if row.state != "OPEN":
            raise Refused(f"session {req.session_id}: already closed ({row.end_reason})")
        if not self.tracking:
            raise Refused("sessions are not tracked (sessions.tracking is false): "
                          "nothing to cut")
        if row.kind == "vpn" and self.vpn is not None:
            # one OpenVPN client: lthn-vpnd cuts it (and audits the cut) by its ref
            reason = f"killed by {asked.actor}: {req.reason}"
            count = self.vpn.kill_session(row.adapter_ref, row.authid, reason)
            if not count:
                raise Refused(f"session {req.session_id}: lthn-vpnd does not report it "
                              "live (vpnd or OpenVPN down?)")
            self.vpn_book.mark_cut_ref(row.adapter_ref, reason)
            return SessionKilled(session_id=row.id, authid=row.authid, kind=row.kind,
                                 connections=count)
        kinds = [k for k in (self.adapter and self.adapter.kind,
                             self.vpn and self.vpn.kind) if k]
        if self.adapter is None or row.kind != self.adapter.kind:
            raise Refused(f"session {req.session_id} is a {row.kind} session; sessiond "
                          f"cuts {' and '.join(kinds) or 'no'} sessions")
        reason = f"killed by {asked.actor}: {req.reason}"
        counts = self.cut({row.authid: reason}, actor=asked.actor)
        return SessionKilled(session_id=row.id, authid=row.authid, kind=row.kind,
                             connections=counts.get(row.authid, 0))

    def refresh(self) -> str:
        """Reconcile now: sessions from haproxy, every active authid looked at and charged
        up to now, cuts (charging works from the ledger's times, so an extra tick charges
        nothing twice)."""
        self.schedule.reset()
        self.tick()
        return (f"sessiond: reconciled, {len(self.book.open) + len(self.vpn_book.open)} "
                "open sessions")

    # --- cutting ---
    def on_message(self, env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, AuthidDeactivated):
            self.cut({msg.authid: msg.reason})
        elif isinstance(msg, ControlResync):
            self.schedule.reset()   # plan every active authid from the ledger next tick

    def cut(self, reasons: dict[str, str], actor: str = charging.ACTOR) -> dict[str, int]:
        """Cut the live sessions of each authid (never with tracking off); returns how
        many connections (proxy) and clients (VPN) each had."""
        counts = self.cut_proxy(reasons, actor)
        if self.vpn is not None:
            for authid, count in self.cut_vpn(reasons).items():
                counts[authid] = counts.get(authid, 0) + count
        return counts

    def cut_vpn(self, reasons: dict[str, str]) -> dict[str, int]:
        """Ask lthn-vpnd to cut the authids' VPN clients; it audits and publishes each cut
        once OpenVPN confirmed it (session.cut, kind vpn). The rows close as cut."""
        assert self.vpn is not None
        wanted = {a: r for a, r in reasons.items() if a in self.vpn.authids}
        counts = self.vpn.cut(wanted) if wanted else {}
        for authid, count in counts.items():
            if count:
                self.vpn_book.mark_cut(authid, wanted[authid])
        return counts

    def cut_proxy(self, reasons: dict[str, str], actor: str) -> dict[str, int]:
        """Streams first, all at once, then one transaction for the audit lines and
        SessionCut messages."""
        if self.adapter is None:
            return {}
        try:
            counts = self.adapter.cut(set(reasons))
        except HaproxyTrouble as exc:
            log.warning("cannot cut %s now (%s); retrying next tick",
                        ", ".join(short(a) for a in reasons), exc)
            return {}
        done = {a: n for a, n in counts.items() if n}
        if done:
            with self.ledger.transaction() as tx:
                for authid, count in done.items():
                    tx.audit(actor, "cut", authid, connections=count,
                             reason=reasons[authid])
                    tx.emit(SessionCut(authid=authid, kind=self.adapter.kind,
                                       connections=count, reason=reasons[authid]))
        for authid, count in done.items():
            self.book.mark_cut(authid, reasons[authid])
            log.info("authid %s: cut %d connections, %s", short(authid), count,
                     reasons[authid])
        return counts
