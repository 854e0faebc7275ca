"""lthn-firewalld: source lists, destination deny lists and automatic, expiring,
escalating bans (issue #17).

What it does, each turn of the one daemon loop:
- every `firewall.poll_interval` (0.1 s): re-reads the list files that changed
  (lthn/list_files.py) and swaps them into haproxy's runtime ACLs (no reload);
  reads haproxy's per-source offence counters, only the sources over the lowest
  threshold (services/firewalld/offences.py), and bans those over a threshold of one
  kind (services/firewalld/ban_rules.py, services/firewalld/bans.py);
- every second: bans that ran out are lifted; a new haproxy process gets every list and
  ban again;
- every few seconds: bans from the ledger (other writers) are applied;
- on request (`lthnctl ban add|del`, lthn/requests.py): bans by hand, through the same
  ban manager (ledger row, audit line, message, haproxy, nftables) as automatic ones;
- once per `firewall.refusal_window`: one line per source with offences in the window.

haproxy counts refusals per source itself, so no ban decision depends on one datagram per
request reaching Python. `access.refused` events from the bus are counted too: for the
report line of each source, and, for refusals that haproxy did not count (kind other than
"proxy": VPN logins), toward bans. NO_PAYMENT never counts toward a ban; the never-ban
list and the allow list's own entries are never banned.
"""

from __future__ import annotations

import logging
import os
import time

import zmq
from supervisor import childutils

from lthn import sources
from lthn.bus import Envelope
from lthn.config import Config
from lthn.control import Asked, Refused
from lthn.daemon import Daemon, run_daemon
from lthn.haproxy.firewall_files import LIST_KINDS
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from lthn.list_files import ListFiles
from lthn.messages import AccessRefused, BanAdded, BanLifted
from lthn.refusals import Refusal, RefusalKind
from lthn.requests import AddBan, BanChanged, LiftBan
from lthn.source_policy import SourcePolicy
from services.firewalld import ban_rules
from services.firewalld.bans import BanManager, Offence
from services.firewalld.haproxy_firewall import HaproxyFirewall, RuntimeAnswerError
from services.firewalld.nftables import NftablesBans, NftablesUnavailable, table_name
from services.firewalld.refusal_counter import RefusalCounter

log = logging.getLogger(__name__)

HAPROXY_KIND = "proxy"       # refusals haproxy already counted per source
MAX_EVENTS_PER_TURN = 2000   # the loop keeps turning (and polling haproxy) under a flood
LEDGER_REREAD = 3.0
MAX_BAN_SECONDS = 10 * 365 * 86400


class Firewalld(Daemon):
    name = "firewalld"
    prefixes = ["access.refused", "ban."]

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        super().__init__(config, ctx, ledger)
        if self.subscriber is not None:
            # bounded per turn, unlike the base loop's drain-everything
            self.unwatch(self.subscriber.socket)
            self.watch(self.subscriber.socket, self._on_bus_bounded)
        self.control.answer(AddBan, self.add_ban)
        self.control.answer(LiftBan, self.lift_ban)
        self.resync_failure = ""   # haproxy's last refusal of a resync, said once

    def status_details(self) -> dict:
        bans = getattr(self, "bans", None)
        return {"bans": len(bans.book) if bans else len(self.ledger.bans()),
                "nftables": bool(getattr(self, "nftables", None))}

    # --- bans by hand (lthnctl ban add|del, issue #19) ---
    def add_ban(self, req: AddBan, asked: Asked) -> BanChanged:
        source = _canonical(req.address)
        if not 0 < req.seconds <= MAX_BAN_SECONDS:
            raise Refused(f"a ban lasts more than 0 s and at most {MAX_BAN_SECONDS} s "
                          f"(got {req.seconds:g})")
        if "/" not in source and not self.policy().may_ban(source):
            raise Refused(f"{source} is in firewall.never_ban or the allow list: it is never "
                          "banned (remove it there first)")
        row = self.bans.add(source, req.seconds, req.reason, asked.actor)
        return BanChanged(address=source, reason=req.reason, expires=row.expires,
                          changed=True)

    def lift_ban(self, req: LiftBan, asked: Asked) -> BanChanged:
        source = _canonical(req.address)
        row = self.bans.lift(source, req.reason, asked.actor)
        return BanChanged(address=source, reason=req.reason if row else "", expires=0.0,
                          changed=row is not None)

    def start(self) -> None:
        settings = self.config.firewall
        self.clock = time.monotonic
        self.refusals = RefusalCounter(settings.refusal_window, settings.refusal_threshold)
        self.vpn_counters = {kind: RefusalCounter(settings.refusal_window,
                                                  ban_rules.threshold(settings, kind))
                             for kind in ban_rules.BANNING_KINDS}
        self.lists = ListFiles(self.config, LIST_KINDS)
        self.lists.poll()
        self.haproxy = HaproxyFirewall(self.config, HaproxyAdmin(self.config.haproxy_admin_socket,
                                                                 timeout=2.0))
        self.haproxy.set_lists(self.lists.lists())
        self.nftables = self._nftables()
        self.bans = BanManager(self.ledger, settings, self.haproxy, self.nftables, self.policy)
        self.bans.load()
        if self.nftables is not None:
            try:
                self.nftables.start(self.bans.expiries())
            except NftablesUnavailable as exc:
                if settings.nftables == "on":
                    raise
                log.warning("nftables: not used (%s); bans are enforced by haproxy", exc)
                self.nftables = self.bans.nftables = None
        self._resync()
        self.timers.every(settings.poll_interval, self.poll, first=settings.poll_interval)
        self.timers.every(1.0, self.each_second, first=1.0)
        self.timers.every(LEDGER_REREAD, self.bans.load, first=LEDGER_REREAD)
        self.timers.every(settings.refusal_window, self.report, first=settings.refusal_window)
        log.info("firewalld: bans after %d offences of one kind in %g s (%d overlimit), "
                 "first ban %g s, then x%g; %d bans in force; nftables %s",
                 settings.refusal_threshold, settings.refusal_window,
                 settings.overlimit_threshold, settings.ban_time, settings.ban_factor,
                 len(self.bans.book), "used" if self.nftables else "not used")

    def _nftables(self) -> NftablesBans | None:
        mode = self.config.firewall.nftables
        if mode == "off":
            return None
        why = NftablesBans.usable()
        if why is not None:
            if mode == "on":
                raise NftablesUnavailable(f"firewall.nftables is on, but {why}")
            log.info("nftables: not used (%s)", why)
            return None
        # the node's own doors: the proxy's port, and the VPN's in VPN mode
        ports = [self.config.proxy.port]
        if self.config.vpn.enabled:
            ports.append(self.config.vpn.port)
        return NftablesBans(table_name(str(self.config.state)), ports)

    def policy(self) -> SourcePolicy:
        lists = self.lists.lists()
        return SourcePolicy.of(lists["src_deny"], lists["src_allow"],
                               self.config.firewall.never_ban, self.bans.expiries())

    # --- the bus ---
    def _on_bus_bounded(self) -> None:
        assert self.subscriber is not None
        for _ in range(MAX_EVENTS_PER_TURN):
            if not self.subscriber.socket.poll(0):
                return
            env = self.subscriber.receive()
            if env is None:
                continue
            try:
                self.on_message(env)
            except Exception:
                log.exception("firewalld: failed to handle %s from %s", env.topic,
                              env.sender)

    def on_message(self, env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, BanAdded | BanLifted):
            # lthnctl or another writer changed the ledger: apply it now (our own
            # messages match the book already)
            row = self.bans.book.get(msg.source)
            if isinstance(msg, BanLifted) and row is not None or isinstance(msg, BanAdded) \
                    and (row is None or row.expires != msg.expires):
                self.bans.load()
            return
        if not isinstance(msg, AccessRefused):
            return
        source = msg.source or "?"
        refusal = Refusal.of(msg.reason)
        if self.refusals.add(source, self.clock()):
            log.info("source %s: %d refusals in %g s (threshold %d)", source,
                     self.refusals.threshold, self.refusals.window, self.refusals.threshold)
        if msg.kind == HAPROXY_KIND or refusal is None or not refusal.kind.may_ban:
            return
        # a refusal haproxy did not count (VPN auth): counted here
        if self.vpn_counters[refusal.kind].add(source, self.clock()):
            self.bans.ban_offenders([Offence(source, msg.reason,
                                             self.vpn_counters[refusal.kind].threshold,
                                             self.config.firewall.refusal_window)])

    # --- timers ---
    def poll(self) -> None:
        changed = self.lists.poll()
        if changed:
            self.haproxy.set_lists(self.lists.lists())
            if changed & {"dst_deny_ips", "dst_deny_domains"}:
                self.reconfigure_squid()
        if self.haproxy.dirty:
            self._resync()
        self.bans.sweep()    # first: an ended ban's counts are forgotten before they are read
        offenders = self.haproxy.offenders(ban_rules.lowest_threshold(self.config.firewall))
        if offenders:
            offences = []
            for counters in offenders:
                kind = ban_rules.offending_kind(self.config.firewall, counters.in_window)
                if kind is not None and not self.bans.banned(counters.source):
                    offences.append(Offence(counters.source, _reason_name(kind),
                                            counters.in_window[kind],
                                            self.config.firewall.refusal_window))
            self.bans.ban_offenders(offences)
        self.bans.apply_nftables()

    def each_second(self) -> None:
        self._resync()
        self.refusals.prune(self.clock())
        for counter in self.vpn_counters.values():
            counter.prune(self.clock())

    def _resync(self) -> None:
        try:
            self.haproxy.check_process()
        except RuntimeAnswerError as exc:
            # a haproxy without the node's firewall ACLs (not started by lthn-haproxy?):
            # said once per distinct answer, retried every second, never a crash
            if str(exc) != self.resync_failure:
                log.error("haproxy: firewall rules not applied: haproxy answered %r; "
                          "retrying every second", str(exc))
                self.resync_failure = str(exc)
            self.haproxy.dirty = True
            return
        if self.resync_failure and not self.haproxy.dirty:
            log.info("haproxy: firewall rules applied after all")
            self.resync_failure = ""

    def reconfigure_squid(self) -> None:
        """squid re-reads the destination deny files (it checks after name resolution)
        when asked to reconfigure: SIGHUP through supervisord, which runs it."""
        if self.config.proxy.backend != "squid" or "SUPERVISOR_SERVER_URL" not in os.environ:
            return
        try:
            rpc = childutils.getRPCInterface(os.environ)
            rpc.supervisor.signalProcess("squid", "HUP")
            log.info("squid: asked to re-read the destination deny lists")
        except Exception as exc:  # xmlrpc faults and socket errors alike: squid may be off
            log.warning("squid: cannot ask it to re-read the destination deny lists (%s); "
                        "haproxy refuses them meanwhile", exc)

    def report(self) -> None:
        """One line per source with offences in the window (not one per refusal)."""
        sources = self.haproxy.sources() or []
        for counters in sources:
            if self.bans.banned(counters.source):
                continue
            kinds = ", ".join(f"{_reason_name(k)} {n}" for k, n in counters.in_window.items()
                              if n and k.may_ban)
            log.info("source %s: %d offences in %g s (%s); bans at %d of one kind",
                     counters.source, counters.offences, self.config.firewall.refusal_window,
                     kinds, self.config.firewall.refusal_threshold)

    def stop(self) -> None:
        if self.nftables is not None:
            self.nftables.stop()


def _canonical(text: str) -> str:
    try:
        return sources.canonical(text)
    except sources.SourceError as exc:
        raise Refused(str(exc)) from None


def _reason_name(kind: RefusalKind) -> str:
    """The refusal code that stands for a kind in ban reasons (BAD_AUTHID, ...)."""
    return next((r.code for r in Refusal if r.kind is kind), kind.name)


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Firewalld, argv, description="Source lists, destination deny lists "
                      "and automatic bans.")


if __name__ == "__main__":
    raise SystemExit(main())
