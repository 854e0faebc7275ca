"""Keeps haproxy's runtime map of active authids equal to the ledger's active set.

Bus messages say *that* an authid changed; the ledger says what is true, so every change
is applied by asking the ledger (replayed or reordered messages cannot admit an inactive
authid). Missed messages converge two ways (issues #4, #16):
- `catch_up`, every few seconds: the authids the ledger changed since the last look (its
  change counter, `Ledger.authid_changes`), each applied; its cost is what changed, not
  the number of authids (100,000 active authids are a 4 MB `show map`);
- `resync`, the full reconcile (ledger's active set vs `show map`): at start, at once when
  haproxy's process changes, when asked (SIGHUP, `control.resync`), and rarely otherwise,
  for what no ledger change explains (a hand edit of the map).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lthn.access import State
from lthn.authid import AuthidError, parse_authid, short
from lthn.haproxy.runtime import (
    HaproxyAdmin,
    HaproxyUnavailable,
    RuntimeAnswerError,
    parse_show_info,
)
from lthn.ledger import Ledger

log = logging.getLogger(__name__)


# a CLI payload must fit haproxy's buffer (16 kB by default); a bigger one is dropped
# without a word, so entries (~20 bytes each) are added this many at a time
ADD_BATCH = 400
# more changes than this since the last catch-up (e.g. a restored ledger): a full resync
CATCH_UP_LIMIT = 5000

# answers haproxy gives instead of data (runtime API, 2.6)
_ERRORS = ("Unknown map identifier", "Unknown command", "Permission denied",
           "Missing", "Can't", "Out of memory", "Failed to", "Unknown")


def parse_show_map(answer: str) -> Counter[str]:
    """`show map <file>` -> how many entries each key has (`<ptr> <key> <value>` lines)."""
    keys: Counter[str] = Counter()
    for line in answer.splitlines():
        if not line.strip():
            continue
        if line.startswith(_ERRORS):
            raise RuntimeAnswerError(line.strip())
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith("0x"):
            raise RuntimeAnswerError(f"unexpected show map line {line[:80]!r}")
        keys[parts[1]] += 1
    return keys


@dataclass(frozen=True)
class ProcessIdentity:
    """Which haproxy process answers; a new one has a new pid or start time."""
    pid: str
    start: str

    @classmethod
    def from_info(cls, info: dict[str, str]) -> ProcessIdentity:
        return cls(info["Pid"], info.get("Start_time_sec", ""))


class MapSync:
    """Changes haproxy's map only while holding `lock_path` (an flock): with several authd
    processes (supervisord numprocs) each check-then-add would otherwise race and add an
    authid twice, and a resync could undo a newer change by another process."""

    def __init__(self, admin: HaproxyAdmin, map_path: Path, ledger: Ledger,
                 lock_path: Path) -> None:
        self.admin = admin
        self.map = str(map_path)
        self.ledger = ledger
        self.lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.process: ProcessIdentity | None = None
        self.unreachable = False  # logged once per outage, not once per retry
        self.seq: int | None = None          # ledger changes applied up to (None: resync)
        self.applied: dict[str, bool] = {}   # authid -> admitted, as last applied (a
                                             # catch-up skips what a message applied)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        # the ledger is read inside too: what is applied is never older than the last change
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.lock_fd)

    # --- talking to haproxy; every method returns False when haproxy is not there ---
    def _command(self, line: str, payload: str | None = None) -> str | None:
        try:
            answer = self.admin.command(line, payload)
        except HaproxyUnavailable as exc:
            if not self.unreachable:
                # at the node's start haproxy comes up after authd: not worth a warning
                # until haproxy has answered once (issue #15)
                level = logging.WARNING if self.process is not None else logging.INFO
                log.log(level, "haproxy: unreachable (%s); retrying", exc)
                self.unreachable = True
            return None
        if self.unreachable:
            log.info("haproxy: reachable again")
            self.unreachable = False
        return answer

    def apply(self, authid: str) -> bool:
        """Make haproxy's map agree with the ledger about one authid."""
        try:
            authid = parse_authid(authid)  # it goes into a runtime command: no spaces
        except AuthidError as exc:
            log.warning("authid: ignored a message about a malformed authid: %s", exc)
            return False
        with self._exclusive():
            row = self.ledger.authid(authid)
            if row is not None and row.state == State.ACTIVE.value:
                admitted, done = True, self._ensure_present(authid, row.service_id)
            else:
                admitted, done = False, self._ensure_absent(authid)
            if done:
                self.applied[authid] = admitted
            return done

    def _ensure_present(self, authid: str, service_id: str) -> bool:
        # ask first: an authid already present (a replayed message) is not added twice.
        # `get map` looks in haproxy's tree; `set map` would walk every entry (12 ms at
        # 100,000 authids on this machine, #16). The value is not checked: only the key
        # admits (haproxy's `-m found`)
        answer = self._command(f"get map {self.map} {authid}")
        if answer is None:
            return False
        if "found=yes" in answer:
            return True
        if "found=no" not in answer:
            log.error("haproxy: get map %s: %s", short(authid), answer.strip()[:200])
            return False
        answer = self._command(f"add map {self.map} {authid} {service_id}")
        if answer is None:
            return False
        if answer.strip():
            log.error("haproxy: add map %s failed: %s", short(authid), answer.strip())
            return False
        log.info("authid %s: admitted by haproxy", short(authid))
        return True

    def _ensure_absent(self, authid: str) -> bool:
        answer = self._command(f"del map {self.map} {authid}")
        if answer is None:
            return False
        if not answer.strip():
            log.info("authid %s: no longer admitted by haproxy", short(authid))
        elif "not found" not in answer.lower():
            log.error("haproxy: del map %s failed: %s", short(authid), answer.strip())
            return False
        return True

    def catch_up(self) -> int | None:
        """Apply every authid the ledger changed since the last look; the number applied
        (None when haproxy is not there). Falls back to a full resync before the first one,
        after too many changes, or when the ledger's counter went back (a restored file)."""
        if self.seq is None or self.ledger.change_seq() < self.seq:
            result = self.resync("catch-up")
            return None if result is None else sum(result)
        changes = self.ledger.authid_changes(self.seq, CATCH_UP_LIMIT)
        if len(changes) == CATCH_UP_LIMIT:
            result = self.resync(f"over {CATCH_UP_LIMIT} changes")
            return None if result is None else sum(result)
        applied = 0
        with self._exclusive():
            for change in changes:
                admitted = change.state == State.ACTIVE.value
                if self.applied.get(change.authid) is not admitted:
                    done = self._ensure_present(change.authid, change.service_id) \
                        if admitted else self._ensure_absent(change.authid)
                    if not done:
                        return None   # haproxy went away: the same changes next time
                    self.applied[change.authid] = admitted
                    applied += 1
                self.seq = change.seq
        return applied

    def resync(self, reason: str) -> tuple[int, int] | None:
        """Add what the ledger has and the map lacks, delete the rest: (added, removed)."""
        with self._exclusive():
            return self._resync(reason)

    def _resync(self, reason: str) -> tuple[int, int] | None:
        # read the counter first: a change while we read is applied again by catch_up
        seq = self.ledger.change_seq()
        answer = self._command(f"show map {self.map}")
        if answer is None:
            return None
        try:
            present = parse_show_map(answer)
        except RuntimeAnswerError as exc:
            log.error("haproxy: cannot read map %s: %s", self.map, exc)
            return None
        active = {a: a[:2] for a in self.ledger.active_authids()}
        missing = [a for a in active if a not in present]
        extra = [a for a in present if a not in active]
        for start in range(0, len(missing), ADD_BATCH):
            payload = "\n".join(f"{a} {active[a]}" for a in missing[start:start + ADD_BATCH])
            result = self._command(f"add map {self.map}", payload)
            if result is None:
                return None
            if result.strip():
                log.error("haproxy: add map failed during resync: %s", result.strip()[:200])
        for authid in extra:
            # an entry the ledger does not call active: never leave it admitted (issue #4)
            if self._command(f"del map {self.map} {authid}") is None:
                return None
        if missing or extra:
            log.info("haproxy: map resynced (%s): %d added, %d removed, %d active",
                     reason, len(missing), len(extra), len(active))
        self.seq = seq
        self.applied.clear()
        return len(missing), len(extra)

    def check_process(self) -> bool:
        """Resync at once when a different haproxy process answers; True if one did."""
        answer = self._command("show info")
        if answer is None:
            return False
        try:
            identity = ProcessIdentity.from_info(parse_show_info(answer))
        except RuntimeAnswerError as exc:
            log.error("haproxy: %s", exc)
            return False
        if identity == self.process:
            return False
        reason = "start"
        if self.process is not None:
            log.info("haproxy: new process (pid %s, was %s)", identity.pid, self.process.pid)
            reason = "haproxy process changed"
        self.process = identity
        self.resync(reason)
        return True
