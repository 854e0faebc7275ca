"""lthn-vpnd: holds OpenVPN's one management connection (issue #18).

- Attaches to the management socket (retrying every RECONNECT_SECONDS while OpenVPN is
  away), asks `pid` and `status 3`, starts `bytecount`, and releases OpenVPN's hold: no
  login can arrive before someone is listening.
- Answers every >CLIENT:CONNECT / REAUTH at once (services/vpn/admission.py): the
  source by the operator's lists and the bans (services/vpn/source_rules.py: the list
  files re-read within a second of a change, the bans on `ban.*` and every 10 s), then
  the authid by the ledger: `client-auth-nt` or `client-deny` with a reason code;
  refusals are published as `access.refused` (kind vpn) for firewalld.
- Follows ESTABLISHED / DISCONNECT / BYTECOUNT_CLI into the client table and writes the
  snapshot sessiond charges from (services/vpn/clients.py).
- Cuts the clients of an authid when sessiond asks (`session.kill`, kind vpn) with
  `client-kill CID`: the client is told to restart, logs in again and is refused until
  the authid is paid again (the original Lethean client retries every ~10 s, so a later
  payment reopens the tunnel by itself). Each cut is audited and published as `session.cut`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import time
from collections.abc import Callable

import zmq

from lthn.authid import AuthidError, parse_authid, short
from lthn.bus import Envelope
from lthn.config import Config
from lthn.daemon import Daemon
from lthn.ledger import Ledger
from lthn.messages import AccessRefused, BanAdded, BanLifted, SessionCut, SessionKill
from lthn.vpn.contract import ref, write_snapshot
from services.vpn import admission
from services.vpn.clients import ClientTable
from services.vpn.management import (
    ByteCount,
    ClientAddress,
    ClientBlock,
    Event,
    Garbage,
    Listing,
    Notice,
    Reply,
    StatusError,
    parse_status,
)
from services.vpn.management_link import Answer, LinkDown, ManagementLink
from services.vpn.source_rules import LIST_POLL_SECONDS, RELOAD_SECONDS, SourceRules

log = logging.getLogger(__name__)

ACTOR = "vpnd"
KIND = "vpn"
RECONNECT_SECONDS = 0.2    # how soon a restarted OpenVPN is attached again
SNAPSHOT_SECONDS = 1.0     # the snapshot is rewritten at least this often (a sign of life)
RECONCILE_SECONDS = 30.0   # `status 3` while attached: converge on what OpenVPN holds
BYTECOUNT_SECONDS = 5      # OpenVPN reports each client's byte counters this often
ENDED_KEEP_SECONDS = 5.0   # an ended client stays in the snapshot (not live) this long,
                           # so sessiond reads its final byte counters
GARBAGE_LOGGED = 20


def _ip(text: str) -> str:
    """The address if it is one, else "" (it goes into logs, bans and bus messages)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


class Vpnd(Daemon):
    name = "vpnd"
    prefixes = ["session.kill", "ban."]

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(config, ctx, ledger)
        self.wall = wall
        self.link = ManagementLink(config.vpn_management_socket)
        self.watched: int | None = None
        self.clients = ClientTable()
        self.openvpn_pid = 0
        self.holding = False       # a hold release is on its way
        self.waiting_logged = False
        self.killing: dict[int, tuple[str, str]] = {}      # cid -> (authid, reason)
        self.cut_counts: dict[str, int] = {}               # authid -> clients cut so far
        self.garbage = 0
        self.sources = SourceRules(config)

    # --- attaching ---
    def start(self) -> None:
        self.sources.poll_lists()
        self.reload_bans()
        self.timers.every(LIST_POLL_SECONDS, self.sources.poll_lists, first=LIST_POLL_SECONDS)
        self.timers.every(RELOAD_SECONDS, self.reload_bans, first=RELOAD_SECONDS)
        self.attach()
        self.timers.every(RECONNECT_SECONDS, self.attach, first=RECONNECT_SECONDS)
        self.timers.every(SNAPSHOT_SECONDS, self.write_snapshot)
        self.timers.every(RECONCILE_SECONDS, self.reconcile, first=RECONCILE_SECONDS)

    def attach(self) -> None:
        if self.link.connected:
            return
        if not self.link.connect():
            if not self.waiting_logged:
                log.info("openvpn: no management socket at %s yet; waiting for OpenVPN",
                         self.link.path)
                self.waiting_logged = True
            return
        self.waiting_logged = False
        self.watched = self.link.fileno()
        self.watch(self.watched, self.on_readable)
        log.info("openvpn: attached to the management socket %s", self.link.path)
        try:
            self.link.command("pid", self.on_pid)
            self.link.command(f"bytecount {BYTECOUNT_SECONDS}")
            # `status` is refused while OpenVPN holds: it is asked once the hold is released
            self.holding = True
            self.link.command("hold release", self.on_hold_released)
        except LinkDown as exc:
            self.detach(str(exc))

    def detach(self, why: str) -> None:
        if self.watched is not None:
            self.unwatch(self.watched)
            self.watched = None
        self.link.close()
        self.openvpn_pid = 0
        self.killing.clear()
        self.cut_counts.clear()
        self.clients.changed = True
        if why:
            log.warning("openvpn: management connection lost (%s); reconnecting", why)
        self.write_snapshot()

    def reconcile(self) -> None:
        if self.link.connected:
            self._send("status 3", functools.partial(self.on_status, "periodic"))

    def _send(self, command: str, on_answer: Callable[[Answer], None] | None = None) -> bool:
        try:
            self.link.command(command, on_answer)
            return True
        except LinkDown as exc:
            self.detach(str(exc))
            return False

    # --- answers to our commands ---
    def on_pid(self, answer: Answer) -> None:
        text = answer.text if isinstance(answer, Reply) else ""
        if text.startswith("pid=") and text[4:].isdigit():
            self.openvpn_pid = int(text[4:])
            self.clients.changed = True
            log.info("openvpn: pid %d", self.openvpn_pid)
        else:
            log.error("openvpn: unexpected answer to pid: %s", answer.summary())

    def on_hold_released(self, answer: Answer) -> None:
        self.holding = False
        if isinstance(answer, Reply) and answer.ok:
            log.info("openvpn: hold released; logins are answered")
        else:
            log.error("openvpn: hold release failed: %s", answer.summary())
        self._send("status 3", functools.partial(self.on_status, "attach"))

    def on_status(self, why: str, answer: Answer) -> None:
        if not isinstance(answer, Listing):
            log.error("openvpn: status 3 failed: %s", answer.summary())
            return
        try:
            rows = parse_status(answer.lines)
        except StatusError as exc:
            log.error("openvpn: cannot read status 3: %s", exc)
            return
        known = []
        for row in rows:
            if not row.address:
                # listed before it has a tunnel address: a login still being answered, or
                # one refused and not yet gone; not a session (seen in a real run, #18)
                continue
            try:
                known.append((row, parse_authid(row.username)))
            except AuthidError:
                log.warning("openvpn: client %d (%s) has no authid as username; cutting it",
                            row.cid, row.source)
                self._send(f"client-kill {row.cid}")
        added, removed = self.clients.replace(known)
        if why == "attach" or added or removed:
            log.info("openvpn: %d clients connected (%s: %d new to us, %d gone)",
                     len(known), why, added, removed)

    # --- what OpenVPN tells us ---
    def on_readable(self) -> None:
        try:
            self.link.read(self.dispatch_safely)
        except LinkDown as exc:
            self.detach(str(exc))
            return
        if self.clients.changed:
            self.write_snapshot()

    def dispatch_safely(self, event: Event) -> None:
        try:
            self.dispatch(event)
        except LinkDown:
            raise
        except Exception:
            # a bug on one event must not take the logins of everyone else down
            log.exception("vpnd: failed to handle %s", event.summary())

    def dispatch(self, event: Event) -> None:
        if isinstance(event, ClientBlock):
            if event.kind in ("connect", "reauth"):
                self.answer_login(event)
            elif event.kind == "established":
                self.on_established(event)
            elif event.kind == "disconnect":
                self.on_disconnect(event)
            elif event.kind == "cr_response":
                # no challenge/response is ever asked; refuse rather than leave it hanging
                self._send(f'client-deny {event.cid} {event.kid} "{admission.BAD_AUTHID}"')
        elif isinstance(event, ByteCount):
            self.clients.bytes(event.cid, event.received, event.sent)
        elif isinstance(event, ClientAddress):
            if event.primary:
                self.clients.address(event.cid, event.address)
        elif isinstance(event, Notice):
            if event.source == "HOLD" and not self.holding:
                # not the greeting of a fresh start (released on attach): OpenVPN restarted
                # itself (SIGHUP, SIGUSR1) and its clients are gone
                log.info("openvpn: waiting in hold again (%s); releasing", event.text)
                self.clients.replace([])
                self.holding = True
                self._send("hold release", self.on_hold_released)
            elif event.source == "FATAL":
                log.error("openvpn: %s", event.text)
            else:
                log.debug("openvpn: >%s:%s", event.source, event.text)
        elif isinstance(event, Garbage):
            self.garbage += 1
            if self.garbage <= GARBAGE_LOGGED or self.garbage % 1000 == 0:
                log.warning("openvpn: ignored a line (%d so far): %s", self.garbage, event.why)

    def answer_login(self, block: ClientBlock) -> None:
        """client-auth-nt or client-deny for one CONNECT/REAUTH, at once."""
        began = time.perf_counter()
        source = _ip(block.env.get("untrusted_ip", ""))
        try:
            decision = admission.decide(self.config, block.env.get("username"),
                                        block.env.get("password"), source, self.ledger.authid,
                                        lambda ip: self.sources.refusal(ip, self.wall()),
                                        block.problem)
            if not decision.allowed and block.kind == "reauth" and decision.reason == \
                    admission.NO_PAYMENT and self.left_alone(block.cid, decision.authid):
                decision = admission.Decision(True, "", decision.authid,
                                              "session tracking is off: a running tunnel "
                                              "is left alone")
        except Exception:
            log.exception("vpn client %d: cannot decide; refused for now", block.cid)
            decision = admission.Decision(False, admission.NODE_FAULT,
                                          detail="the ledger could not be read")
        if decision.allowed:
            command = f"client-auth-nt {block.cid} {block.kid}"
        else:
            # the reason is one of admission.REASONS: our words, never the client's
            command = (f'client-deny {block.cid} {block.kid} "{decision.reason}" '
                       f'"{decision.reason}"')
        if not self._send(command):
            return
        # the same names as authd's status answers; watchd labels them by process
        self.control.stats.observe("auth_decision_seconds", time.perf_counter() - began)
        self.control.stats.count("auth_decisions_total",
                                 {"decision": decision.reason or "OK"})
        log.info("vpn client %d from %s: %s %s (%s)", block.cid, source or "?",
                 "re-login" if block.kind == "reauth" else "login", decision.verdict,
                 decision.detail)
        if not decision.allowed:
            self.publish(AccessRefused(reason=decision.reason, source=source,
                                       authid=decision.authid, destination="", kind=KIND))

    def left_alone(self, cid: int, authid: str) -> bool:
        """With session tracking off nothing is cut (as proxy tunnels are not): a
        renegotiation of a tunnel that is up is let through even when it is unpaid."""
        if self.config.sessions.tracking:
            return False
        return any(c.cid == cid for c in self.clients.live_of(authid))

    def on_established(self, block: ClientBlock) -> None:
        env = block.env
        try:
            authid = parse_authid(env.get("username", ""))
        except AuthidError:
            log.error("vpn client %d: established without an authid as username; cutting it",
                      block.cid)
            self._send(f"client-kill {block.cid}")
            return
        source = _ip(env.get("trusted_ip", ""))
        port = env.get("trusted_port", "")
        since = float(env["time_unix"]) if env.get("time_unix", "").isdigit() else self.wall()
        client = self.clients.established(block.cid, authid,
                                          f"{source}:{port}" if port.isdigit() else source,
                                          since)
        client.address = env.get("ifconfig_pool_remote_ip", "")
        log.info("vpn client %d: connected, authid %s from %s, tunnel address %s",
                 block.cid, short(authid), client.source, client.address or "?")

    def on_disconnect(self, block: ClientBlock) -> None:
        env = block.env
        received = env.get("bytes_received", "")
        sent = env.get("bytes_sent", "")
        if received.isdigit() and sent.isdigit():
            self.clients.bytes(block.cid, int(received), int(sent))
        client = self.clients.ended(block.cid, self.wall())
        if client is not None:
            log.info("vpn client %d: disconnected, authid %s, %d bytes in, %d out%s",
                     block.cid, short(client.authid), client.received, client.sent,
                     f" (cut: {client.killed})" if client.killed else "")

    # --- cutting, when sessiond asks ---
    def on_message(self, env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, SessionKill) and msg.kind == KIND:
            self.kill(msg.authid, msg.reason, msg.ref)
        elif isinstance(msg, BanAdded | BanLifted):
            self.reload_bans()

    def reload_bans(self) -> None:
        self.sources.load_bans(self.ledger.bans())

    def kill(self, authid: str, reason: str, only: str = "") -> int:
        """client-kill every live client of `authid` (or only the one whose session ref is
        `only`); returns how many were asked."""
        clients = [c for c in self.clients.live_of(authid) if c.cid not in self.killing
                   and (not only or ref(self.openvpn_pid, c.cid, c.since) == only)]
        if not clients:
            return 0
        if not self.link.connected:
            log.warning("authid %s: cannot cut %d VPN clients now (not attached to OpenVPN)",
                        short(authid), len(clients))
            return 0
        for client in clients:
            self.killing[client.cid] = (authid, reason)
            if not self._send(f"client-kill {client.cid}",
                              functools.partial(self.on_killed, client.cid)):
                return 0
        return len(clients)

    def on_killed(self, cid: int, answer: Answer) -> None:
        authid, reason = self.killing.pop(cid, ("", ""))
        if not authid:
            return
        if isinstance(answer, Reply) and answer.ok:
            self.clients.killed(cid, reason)
            self.cut_counts[authid] = self.cut_counts.get(authid, 0) + 1
        else:
            log.debug("vpn client %d: client-kill: %s (already gone)", cid, answer.summary())
        if any(a == authid for a, _ in self.killing.values()):
            return   # more answers to come for this authid
        count = self.cut_counts.pop(authid, 0)
        if not count:
            return
        with self.ledger.transaction() as tx:
            tx.audit(ACTOR, "cut", authid, connections=count, reason=reason, kind=KIND)
            tx.emit(SessionCut(authid=authid, kind=KIND, connections=count, reason=reason))
        log.info("authid %s: cut %d VPN clients, %s", short(authid), count, reason)

    # --- lthnctl (issue #19) ---
    def status_details(self) -> dict:
        live = sum(1 for c in self.clients.by_cid.values() if c.live)
        return {"openvpn": f"attached (pid {self.openvpn_pid})" if self.openvpn_pid
                else "not attached", "clients": live, "bans": len(self.sources.bans)}

    def refresh(self) -> str:
        """Re-read the bans and the source lists and ask OpenVPN for its clients now."""
        self.reload_bans()
        self.sources.poll_lists()
        if not self.link.connected:
            return "vpnd: bans and source lists re-read; not attached to OpenVPN"
        self.reconcile()
        return "vpnd: bans and source lists re-read; asked OpenVPN for its clients (status 3)"

    # --- the snapshot sessiond reads ---
    def write_snapshot(self) -> None:
        self.clients.prune_ended(self.wall() - ENDED_KEEP_SECONDS)
        self.control.stats.gauge("vpn_clients",
                                 sum(1 for c in self.clients.by_cid.values() if c.live))
        try:
            write_snapshot(self.config.vpn_clients_path,
                           self.clients.snapshot(self.wall(), os.getpid(), self.openvpn_pid))
            self.clients.changed = False
        except OSError as exc:
            log.error("cannot write %s: %s", self.config.vpn_clients_path, exc)

    def stop(self) -> None:
        # the snapshot then says "not attached": sessiond stops taking clients for live
        self.detach("")
