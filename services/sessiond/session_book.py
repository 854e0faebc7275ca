"""The open session rows of one kind, kept in step with what the kind's adapter observes.

Kind-agnostic (ROADMAP: VPN sessions plug in with their own adapter): an adapter reports
the sessions it sees live as `Observed` (keyed by its own handle, `ref`), and the book opens
a ledger row for a new one, closes the row of one no longer seen and keeps byte counters,
each change with its bus message queued in the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lthn.authid import short
from lthn.ledger import SessionRow, Tx
from lthn.messages import SessionClosed, SessionOpened

log = logging.getLogger(__name__)

ACTOR = "sessiond"


@dataclass(frozen=True)
class Observed:
    """One live session as an adapter sees it now. Counters are cumulative for `ref`
    (they may include earlier sessions); `base_*` is where they stood before this one."""
    ref: str
    authid: str
    source: str
    bytes_in: int
    bytes_out: int
    base_in: int = 0
    base_out: int = 0
    live: bool = True    # False: seen but no longer live (its final counters)


@dataclass
class _Open:
    id: int
    authid: str
    base_in: int | None       # None: inherited from before a restart, not observed yet
    base_out: int | None
    bytes_in: int
    bytes_out: int
    cut_reason: str = ""
    written: float = 0.0      # when its byte counters were last written (tx clock)


class SessionBook:
    """`bytes_every`: an open session's byte counters are written to its row at most this
    often (seconds), and when it closes; 10,000 busy sessions must not cost 10,000 row
    updates a tick (#16). A restart loses at most that much of an open session's count."""

    def __init__(self, kind: str, open_rows: list[SessionRow], bytes_every: float = 60.0
                 ) -> None:
        self.kind = kind
        self.bytes_every = bytes_every
        self.open: dict[str, _Open] = {
            r.adapter_ref: _Open(r.id, r.authid, None, None, r.bytes_in, r.bytes_out)
            for r in open_rows if r.kind == kind}
        self.unwritten: set[str] = set()      # open refs whose counted bytes are not written
        self._authids: set[str] | None = None  # authids of `open`, None: to be counted

    @property
    def authids(self) -> set[str]:
        """Authids with an open session of this kind."""
        if self._authids is None:
            self._authids = {s.authid for s in self.open.values()}
        return set(self._authids)   # a copy: callers compare before and after

    def mark_cut(self, authid: str, reason: str) -> None:
        """The adapter cut this authid's connections: its rows close as cut, with the
        first reason (a repeated cut of the same session says "not active")."""
        for session in self.open.values():
            if session.authid == authid and not session.cut_reason:
                session.cut_reason = reason

    def mark_cut_ref(self, ref: str, reason: str) -> None:
        """One session was cut (by hand): its row closes as cut."""
        session = self.open.get(ref)
        if session is not None and not session.cut_reason:
            session.cut_reason = reason

    def apply(self, tx: Tx, observed: dict[str, Observed], gone_reason: str = "ended",
              changed: set[str] | None = None) -> set[str]:
        """Open, update and close rows so they match `observed`; returns the authids
        whose session closed now. `changed`: the refs whose observation differs from the
        last apply's (missing ones included), when the adapter knows them: only those
        are looked at (#16: 10,000 quiet tunnels cost a tick nothing); None: all."""
        if changed is None:
            refs: set[str] | dict[str, Observed] = observed
            ending = [r for r, s in self.open.items() if r not in observed
                      or not observed[r].live or observed[r].authid != s.authid]
        else:
            refs = changed & observed.keys()
            ending = [r for r in changed & self.open.keys() if r not in observed
                      or not observed[r].live or observed[r].authid != self.open[r].authid]
        closed: set[str] = set()
        for ref in ending:
            session = self.open.pop(ref)
            self._authids = None
            self.unwritten.discard(ref)
            final = observed.get(ref)
            if final is not None and final.authid == session.authid:
                self._count(session, final)   # counters are final once streams end
            reason = f"cut, {session.cut_reason}" if session.cut_reason else gone_reason
            # OPEN -> CLOSED
            tx.close_session(session.id, reason, session.bytes_in, session.bytes_out)
            tx.audit(ACTOR, "session closed", session.authid, session_id=session.id,
                     kind=self.kind, reason=reason, bytes_in=session.bytes_in,
                     bytes_out=session.bytes_out)
            tx.emit(SessionClosed(session_id=session.id, kind=self.kind,
                                  authid=session.authid, reason=reason,
                                  bytes_in=session.bytes_in, bytes_out=session.bytes_out))
            log.info("session %d: closed (%s), authid %s, %d bytes in, %d out", session.id,
                     reason, short(session.authid), session.bytes_in, session.bytes_out)
            closed.add(session.authid)
        for ref in refs:
            seen = observed[ref]
            if not seen.live:
                continue
            session = self.open.get(ref)
            if session is None:
                # (none) -> OPEN
                sid = tx.open_session(self.kind, seen.authid, seen.source, ref)
                tx.audit(ACTOR, "session opened", seen.authid, session_id=sid,
                         kind=self.kind, source=seen.source)
                session = self.open[ref] = _Open(sid, seen.authid, seen.base_in,
                                                 seen.base_out, 0, 0, written=tx.now)
                self._authids = None
                tx.emit(SessionOpened(session_id=sid, kind=self.kind, authid=seen.authid,
                                      source=seen.source))
                log.info("session %d: opened, authid %s from %s", sid, short(seen.authid),
                         seen.source or "?")
            if self._count(session, seen):
                self.unwritten.add(ref)
        for ref in [r for r in self.unwritten if tx.now - self.open[r].written >= self.bytes_every]:
            session = self.open[ref]
            tx.update_session_bytes(session.id, session.bytes_in, session.bytes_out)
            session.written = tx.now
            self.unwritten.discard(ref)
        return closed

    @staticmethod
    def _count(session: _Open, seen: Observed) -> bool:
        """Take the session's bytes from the counters; True when they changed."""
        if session.base_in is None or session.base_out is None:
            # inherited row: what it had counted is already in the counters
            session.base_in = seen.bytes_in - session.bytes_in
            session.base_out = seen.bytes_out - session.bytes_out
        counted = (max(0, seen.bytes_in - session.base_in),
                   max(0, seen.bytes_out - session.base_out))
        if counted == (session.bytes_in, session.bytes_out):
            return False
        session.bytes_in, session.bytes_out = counted
        return True
