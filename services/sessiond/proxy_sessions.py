"""The proxy kind's adapter: haproxy's stick table (`contract.STICK_TABLE`) is what is live, the
request log says which client connection carries which authid, and cutting is
`show sess` + `shutdown session <ptr>` for each of the authid's streams (docs/design.md).

An authid has one proxy session while haproxy counts it live: `conn_cur > 0`, or requests
were admitted since the last look (a short plain-HTTP request may come and go between two
polls). haproxy updates byte counters when a stream ends, so a tunnel's bytes show when it
closes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from lthn.haproxy.contract import STICK_TABLE
from lthn.haproxy.request_log import RequestLogListener
from lthn.haproxy.runtime import HaproxyAdmin
from services.sessiond.client_map import ClientMap
from services.sessiond.haproxy_answers import AnswerError, TableEntry, parse_sessions, parse_table
from services.sessiond.session_book import Observed

log = logging.getLogger(__name__)

KIND = "proxy"


class HaproxyTrouble(Exception):
    """haproxy is down or answered garbage; the text says which. Retried next tick."""


class ProxyAdapter:
    kind = KIND

    def __init__(self, admin: HaproxyAdmin, log_port: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.admin = admin
        self.log_port = log_port
        self.clients = ClientMap(clock)
        self.clock = clock
        self.last: dict[str, TableEntry] | None = None   # previous poll, None before one
        self.shut: dict[tuple[str, str], float] = {}     # (ptr, src) -> when shut down
        self.request_log: RequestLogListener | None = None   # None until bound

    # --- request log ---
    def open_log(self) -> RequestLogListener:
        """Listen for the request log; raises OSError (the port is taken)."""
        self.request_log = RequestLogListener(self.log_port, "sessions")
        return self.request_log

    def read_log(self) -> None:
        if self.request_log is not None:
            for line in self.request_log.drain():
                self.clients.learn(line)

    def close(self) -> None:
        if self.request_log is not None:
            self.request_log.close()
            self.request_log = None

    # --- what is live ---
    def _ask(self, command: str) -> str:
        try:
            return self.admin.command(command)
        except OSError as exc:   # HaproxyUnavailable, a reset, a timeout
            raise HaproxyTrouble(str(exc)) from exc

    def poll(self) -> dict[str, Observed]:
        """Every table entry by key (= authid), `live` or not (a session that ended
        carries its final byte counters); raises HaproxyTrouble."""
        self.read_log()  # learn the newest client connections before judging liveness
        try:
            entries = {e.key: e for e in parse_table(self._ask(f"show table {STICK_TABLE}"),
                                                     STICK_TABLE)}
        except AnswerError as exc:
            raise HaproxyTrouble(f"show table {STICK_TABLE}: {exc}") from exc
        before = self.last
        self.last = entries
        live: dict[str, Observed] = {}
        for key, entry in entries.items():
            prev = before.get(key) if before is not None else entry
            # a key new since the last poll (or counters reset by a haproxy restart)
            # counts from zero; on the first poll only conn_cur says live
            if prev is None or prev.http_req_cnt > entry.http_req_cnt:
                prev = TableEntry(key, 0, 0, 0, 0)
            live[key] = Observed(
                ref=key, authid=key, source=self.clients.source_of.get(key, ""),
                bytes_in=entry.bytes_in, bytes_out=entry.bytes_out,
                base_in=prev.bytes_in, base_out=prev.bytes_out,
                live=entry.conn_cur > 0 or entry.http_req_cnt > prev.http_req_cnt)
        return live

    # --- cutting ---
    def cut(self, authids: set[str]) -> dict[str, int]:
        """Shut down every stream whose client connection carried one of `authids`, with
        one `show sess`; returns how many were shut down now per authid (streams already
        shut and not yet freed are not counted again). Raises HaproxyTrouble."""
        self.read_log()
        owner = {c: a for a in authids for c in self.clients.clients_of(a)}
        counts = dict.fromkeys(authids, 0)
        if not owner:
            return counts
        try:
            streams = parse_sessions(self._ask("show sess"))
        except AnswerError as exc:
            raise HaproxyTrouble(f"show sess: {exc}") from exc
        now = self.clock()
        for stream in streams:
            authid = owner.get(stream.src)
            if authid is None:
                continue
            # right after `show sess`: a freed stream's pointer may be reused later
            answer = self._ask(f"shutdown session {stream.ptr}")
            if answer.strip():
                log.debug("shutdown session %s: %s", stream.ptr, answer.strip())
                continue
            if (stream.ptr, stream.src) not in self.shut:
                counts[authid] += 1
            self.shut[(stream.ptr, stream.src)] = now
        for key in [k for k, at in self.shut.items() if at < now - 10]:
            del self.shut[key]
        return counts

    def prune(self) -> None:
        """Forget client connections that no longer exist (run now and then)."""
        try:
            streams = parse_sessions(self._ask("show sess"))
        except (AnswerError, HaproxyTrouble) as exc:
            log.debug("client map prune skipped: %s", exc)
            return
        self.read_log()
        dropped = self.clients.prune({s.src for s in streams}, older_than=5.0)
        if dropped:
            log.debug("client map: forgot %d closed connections", dropped)
