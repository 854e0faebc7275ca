"""The proxy kind's adapter: what haproxy's two stick tables (lthn/haproxy/contract.py) say
is live, and cutting by `show sess` + `shutdown session <ptr>` (docs/design.md).

- `authid_sessions` (one entry per authid) says which authids are live: `conn_cur > 0`, or
  requests were admitted since the last look (a short plain-HTTP request may come and go
  between two polls). Its entries expire soon after their last stream, so a poll reads
  the authids live now or lately, not every authid ever admitted (#16). haproxy updates
  byte counters when a stream ends, so a tunnel's bytes show when it closes.
- `authid_streams` (one entry per authid and client connection) says which client
  connections carry an authid's live streams: the streams to cut, found in haproxy itself,
  so a restarted sessiond cuts what it never saw opened (#14).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection

from lthn.haproxy.contract import STICK_TABLE, STREAM_TABLE
from lthn.haproxy.runtime import HaproxyAdmin
from services.sessiond.haproxy_answers import (
    AnswerError,
    ClientStreams,
    TableEntry,
    TableReader,
    counters_entry,
    parse_sessions,
    parse_stream_table,
)
from services.sessiond.session_book import Observed

log = logging.getLogger(__name__)

KIND = "proxy"
SHUT_REMEMBERED = 10.0   # seconds a shut stream is not counted again (until it is freed)
# seconds between whole reads of the authid table: in between, a poll lists only the
# entries with requests since the last one and those without a live stream (#16), so a
# live session's byte counters (moved by haproxy as each of its streams ends) are read
# at least this often; its row takes them at most every `SessionBook.bytes_every`
WHOLE_READ_EVERY = 30.0


class HaproxyTrouble(Exception):
    """haproxy is down or answered garbage; the text says which. Retried next tick."""


class ProxyAdapter:
    kind = KIND

    def __init__(self, admin: HaproxyAdmin, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.admin = admin
        self.clock = clock
        self.wallclock = wallclock     # haproxy's `date` sets an entry's gpt0 (contract)
        self.last_read: float | None = None    # wall time the last read began
        self.whole_read: float | None = None   # wall time the last whole read began
        self.whole_reads = 0                   # how many (for tests and benches)
        self.table = TableReader(STICK_TABLE)            # the last poll's counters (text)
        self.first = True                                # no poll answered yet
        self.observed: dict[str, Observed] = {}          # and what it reported
        self.pulse: set[str] = set()     # reported live only for requests since the last
        self.changed: set[str] | None = None  # keys whose observation the last poll changed
        self.shut: dict[tuple[str, str], float] = {}     # (ptr, src) -> when shut down

    def _ask(self, command: str) -> str:
        try:
            return self.admin.command(command)
        except OSError as exc:   # HaproxyUnavailable, a reset, a timeout
            raise HaproxyTrouble(str(exc)) from exc

    def streams(self, live_only: bool) -> list[ClientStreams]:
        """The stream table: every client connection admitted lately, or only those with a
        live stream. Raises HaproxyTrouble."""
        command = f"show table {STREAM_TABLE}" + (" data.conn_cur gt 0" if live_only else "")
        try:
            return parse_stream_table(self._ask(command), STREAM_TABLE)
        except AnswerError as exc:
            raise HaproxyTrouble(f"{command}: {exc}") from exc

    # --- what is live ---
    def poll(self, known: Collection[str] = frozenset()) -> dict[str, Observed]:
        """Every table entry by key (= authid), `live` or not (a session that ended
        carries its final byte counters); raises HaproxyTrouble. The client address of a
        live authid not in `known` (a session about to open) is read from the stream
        table, which is asked only then.

        The answer is compared with the last poll's as text: an entry that reads the same
        is the same `Observed` object as then (live only while it has a stream), and
        `self.changed` names the keys whose observation differs or that are gone, for the
        book to look at only those (#16: 10,000 quiet tunnels cost a tick nothing)."""
        fresh, gone = self._read()
        first, self.first = self.first, False
        counters = self.table.counters
        live = dict(self.observed)
        for key in gone:
            del live[key]
        # live last time only by new requests: the same counters now mean it is not
        for key in self.pulse - fresh.keys() - gone:
            live[key] = dataclasses.replace(live[key], live=False)
        changed = fresh.keys() | gone | (self.pulse - gone)
        pulse = set()
        for key in fresh:
            text = counters[key]
            entry = counters_entry(key, text)
            old = text if first else fresh[key]
            prev = counters_entry(key, old) if old is not None else TableEntry(key, 0, 0, 0, 0)
            # a key new since the last poll (or counters reset: the entry expired, or
            # haproxy restarted) counts from zero; on the first poll only conn_cur says live
            if prev.http_req_cnt > entry.http_req_cnt:
                prev = TableEntry(key, 0, 0, 0, 0)
            requested = entry.http_req_cnt > prev.http_req_cnt
            live[key] = Observed(
                ref=key, authid=key, source="",
                bytes_in=entry.bytes_in, bytes_out=entry.bytes_out,
                base_in=prev.bytes_in, base_out=prev.bytes_out,
                live=entry.conn_cur > 0 or requested)
            if requested and entry.conn_cur == 0:
                pulse.add(key)
        opening = [key for key in live.keys() - known if live[key].live]
        if opening:
            sources = self._sources(set(opening))
            for key in opening:
                live[key] = dataclasses.replace(live[key], source=sources.get(key, ""))
            changed.update(opening)
        self.observed, self.pulse, self.changed = live, pulse, changed
        return live

    def _read(self) -> tuple[dict[str, str | None], set[str]]:
        """The table's changes since the last read (TableReader): from the entries with
        requests since then and those without a live stream when that is enough, else
        (the first read, every WHOLE_READ_EVERY, when those do not add up) from all of
        them. Raises HaproxyTrouble."""
        now = self.wallclock()
        # a read that fails leaves None: the next one reads the whole table
        since, self.last_read = self.last_read, None
        try:
            read = None
            if self.table.touch_stored and since is not None and \
                    self.whole_read is not None and 0 <= now - self.whole_read < WHOLE_READ_EVERY:
                # gpt0 is haproxy's `date` (whole seconds) at the request: a second early
                read = self.table.read_touched(
                    self._ask(f"show table {STICK_TABLE} data.conn_cur eq 0"),
                    self._ask(f"show table {STICK_TABLE} data.gpt0 ge {int(since) - 1}"))
            if read is None:
                self.whole_read = now
                self.whole_reads += 1
                # read while haproxy writes: 10,000 entries take it ~10 ms (#16)
                read = self.table.read_chunks(
                    self.admin.answer_chunks(f"show table {STICK_TABLE}"))
        except AnswerError as exc:
            raise HaproxyTrouble(f"show table {STICK_TABLE}: {exc}") from exc
        except OSError as exc:   # HaproxyUnavailable, a reset, a timeout
            raise HaproxyTrouble(str(exc)) from exc
        self.last_read = now
        return read

    def _sources(self, authids: set[str]) -> dict[str, str]:
        """A client ip of each authid, a connection with live streams first; an authid
        whose connections expired already gets none (its session opens without one)."""
        try:
            entries = self.streams(live_only=False)
        except HaproxyTrouble as exc:
            log.debug("client addresses unknown this tick: %s", exc)
            return {}
        found: dict[str, tuple[int, str]] = {}
        for entry in entries:
            if entry.authid in authids and entry.conn_cur >= found.get(entry.authid, (-1, ""))[0]:
                found[entry.authid] = (entry.conn_cur, entry.client.rpartition(":")[0])
        return {authid: ip for authid, (_, ip) in found.items()}

    # --- cutting ---
    def cut(self, authids: set[str]) -> dict[str, int]:
        """Shut down every live stream of `authids`: their client connections from the
        stream table, their streams from one `show sess`. Returns how many were shut down
        now per authid (streams already shut and not yet freed are not counted again).
        Raises HaproxyTrouble."""
        counts = dict.fromkeys(authids, 0)
        owner = {s.client: s.authid for s in self.streams(live_only=True) if s.authid in authids}
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
        for key in [k for k, at in self.shut.items() if at < now - SHUT_REMEMBERED]:
            del self.shut[key]
        return counts
