"""The ledger: every piece of state that must survive a crash, in SQLite (WAL, FULL sync).

All SQL of the node lives in this module. Exactly-once is done by uniqueness and
transactions, never by process-local locks: `INSERT ... ON CONFLICT DO NOTHING` on
(txid, authid) makes a replayed credit a no-op, and every change of money happens in one
`BEGIN IMMEDIATE` transaction together with its audit line and its outbox message.

Money and access change only through the verbs of `Tx` (credit, add_pending,
release_pending, revoke, spend, activate, deactivate, start_spending): each is one
`UPDATE ... RETURNING` that does the arithmetic (or the guarded state edge) in SQL and
returns the fresh row. The SQL is what SQLite and PostgreSQL both accept (ROADMAP: a shared
ledger on PostgreSQL; tests/test_ledger_postgres.py checks it on a real server).

The outbox keeps each message's topic and version; `Ledger.take_outbox` decodes a row
before deleting it and keeps a row it cannot decode, marked stuck (`lthnctl outbox`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack

from lthn.messages import CATALOGUE, BadMessage, Message, build, field_types

log = logging.getLogger(__name__)

MIGRATIONS: list[str] = [
    # 1: the first schema (issues #2, #3, #4); sessions have a kind and an adapter ref so
    # VPN sessions fit; bans are rows with expiry for firewalld (ROADMAP)
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE authids (
        authid TEXT PRIMARY KEY,
        service_id TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        modified REAL NOT NULL,
        activations INTEGER NOT NULL DEFAULT 0,
        activated_at REAL,
        spending_since REAL,
        last_used REAL,
        credit INTEGER NOT NULL DEFAULT 0,
        pending INTEGER NOT NULL DEFAULT 0,
        spent INTEGER NOT NULL DEFAULT 0,
        charged_ms INTEGER NOT NULL DEFAULT 0,
        payments INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX authids_state ON authids (state);
    CREATE TABLE payments (
        txid TEXT NOT NULL,
        authid TEXT NOT NULL,
        amount INTEGER NOT NULL,
        height INTEGER NOT NULL,
        confirmations INTEGER NOT NULL,
        state TEXT NOT NULL,
        spendable INTEGER NOT NULL,
        ordinal INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (txid, authid)
    );
    CREATE INDEX payments_open ON payments (state, spendable);
    CREATE TABLE rejected_transfers (
        txid TEXT NOT NULL,
        payment_id TEXT NOT NULL,
        amount INTEGER NOT NULL,
        reason TEXT NOT NULL,
        seen REAL NOT NULL,
        PRIMARY KEY (txid, payment_id)
    );
    CREATE TABLE spends (
        id INTEGER PRIMARY KEY,
        authid TEXT NOT NULL,
        amount INTEGER NOT NULL,
        ms INTEGER NOT NULL,
        at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        authid TEXT NOT NULL,
        source TEXT NOT NULL,
        adapter_ref TEXT NOT NULL,
        state TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        end_reason TEXT,
        bytes_in INTEGER NOT NULL DEFAULT 0,
        bytes_out INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_open ON sessions (state, authid);
    CREATE TABLE bans (
        ip TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        authid TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        body BLOB NOT NULL
    );
    """,
    # 2: one spends row per authid and minute of use, summed tick by tick, instead of one
    # row per tick (86,400 rows a day per spending authid at a 1 s tick); v1 rows keep
    # their own negative period so the unique index holds for them
    """
    ALTER TABLE spends ADD COLUMN period INTEGER NOT NULL DEFAULT 0;
    UPDATE spends SET period = -id;
    CREATE UNIQUE INDEX spends_authid_period ON spends (authid, period);
    """,
    # 3: outbox rows carry their message's version, and a row this program cannot decode
    # is kept and marked stuck (why, by which catalogue, since when) instead of being
    # deleted unread (#13); every message queued before v3 was a version 1 message
    """
    ALTER TABLE outbox ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE outbox ADD COLUMN stuck TEXT;
    ALTER TABLE outbox ADD COLUMN stuck_by TEXT;
    ALTER TABLE outbox ADD COLUMN stuck_at REAL;
    CREATE INDEX outbox_stuck_by ON outbox (stuck_by, id);
    """,
    # 4: a change counter on authids (#16): a change of an authid's state or credit gives
    # its row the next number (the verbs of Tx set it), so authd and sessiond read what
    # changed since they last looked instead of every row; charging time (spent,
    # charged_ms, last_used) is not a change of this kind. Rows older than this migration
    # keep 0: a reader starts with a whole read anyway. And an index for the active
    # authids still waiting to start spending, by activation time
    """
    ALTER TABLE authids ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX authids_change_seq ON authids (change_seq);
    CREATE INDEX authids_waiting ON authids (state, spending_since, activated_at);
    """,
]


class LedgerError(Exception):
    """The ledger file cannot be used (newer schema, failed migration, unreadable)."""


class LedgerMissing(LedgerError):
    """There is no ledger file where the config says (a reader never creates one)."""


class LedgerUnreadable(LedgerError):
    """The file where the config says is no ledger: damaged, empty, not SQLite (#14)."""


class LedgerNotWritable(LedgerError):
    """A write failed for a reason of the disk's (full, I/O error, read-only), not of the
    data; the transaction was rolled back, so nothing changed and it can be retried."""

    def __init__(self, path: Path | None, reason: str) -> None:
        super().__init__(f"ledger {path or ''}: not writable: {reason}")
        self.reason = reason


# primary SQLite result codes whose cause is the disk (sqlite3.Error.sqlite_errorcode)
_DISK_REASONS = {13: "disk full", 10: "disk I/O error", 8: "read-only"}


def disk_reason(exc: sqlite3.Error) -> str | None:
    """"disk full" for SQLITE_FULL and the like; None for errors of the data or SQL."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else _DISK_REASONS.get(code & 0xFF)


class NotApplied(LedgerError):
    """A money verb or state edge found no row to change: the authid is not in the
    ledger, or not in the state the edge leaves. The transaction is rolled back."""


@dataclass(frozen=True)
class AuthidRow:
    authid: str
    service_id: str
    state: str
    created: float
    modified: float
    activations: int
    activated_at: float | None
    spending_since: float | None
    last_used: float | None
    credit: int
    pending: int
    spent: int
    charged_ms: int
    payments: int

    @property
    def balance(self) -> int:
        return self.credit - self.spent


@dataclass(frozen=True)
class AuthidChange:
    """What authd needs of a changed authid (Ledger.authid_changes)."""
    seq: int
    authid: str
    service_id: str
    state: str


@dataclass(frozen=True)
class PaymentRow:
    txid: str
    authid: str
    amount: int
    height: int
    confirmations: int
    state: str
    spendable: bool
    ordinal: int
    first_seen: float
    updated: float


@dataclass(frozen=True)
class SessionRow:
    id: int
    kind: str
    authid: str
    source: str
    adapter_ref: str
    state: str
    started: float
    ended: float | None
    end_reason: str | None
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class BanRow:
    """A source address or network (CIDR) banned until `expires`; the row stays after the
    ban ends, so `count` (bans so far) makes a repeat offender's next ban longer (#17)."""
    ip: str
    reason: str
    created: float     # when the ban in force (or the last one) began
    expires: float
    count: int


@dataclass(frozen=True)
class OutboxCounts:
    queued: int    # waiting to be published
    stuck: int     # kept unpublished: a program could not decode them (see StuckRow)


@dataclass(frozen=True)
class StuckRow:
    """An outbox row kept because it could not be decoded, and why."""
    id: int
    topic: str
    version: int
    error: str
    since: float


def catalogue_mark(catalogue: Mapping[str, type[Message]]) -> str:
    """A short digest of every topic's version and fields: a row stuck under one mark is
    tried again only by a program whose catalogue differs (an upgrade), never in a loop."""
    text = ";".join(
        f"{topic}/{cls.version}/" + ",".join(f"{name}:{kind.__name__}"
                                             for name, kind in field_types(cls).items())
        for topic, cls in sorted(catalogue.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decode_outbox_row(catalogue: Mapping[str, type[Message]], topic: str, version: int,
                      body: bytes) -> Message:
    """One outbox row -> its message, or BadMessage saying why it cannot be."""
    cls = catalogue.get(topic)
    if cls is None:
        raise BadMessage(f"unknown topic {topic[:60]!r}")
    if version != cls.version:
        raise BadMessage(f"version {version}, this program knows {topic} v{cls.version}")
    try:
        data = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadMessage(f"body is not msgpack ({type(exc).__name__})") from None
    return build(cls, data)


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: float
    actor: str
    event: str
    authid: str
    detail: dict


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a credit acknowledged in the log must survive power loss (STYLE 7)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open an existing ledger for reading; never creates the file (lthnctl)."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot read the ledger: {exc}") from None


def schema_version(conn: sqlite3.Connection) -> int:
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
    if not has:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(path: Path, migrations: list[str] = MIGRATIONS) -> int:
    """Bring the file to the newest schema; back it up first when it already has data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _migrate(path, migrations)
    except sqlite3.Error as exc:
        raise unusable(path, exc) from exc


def unusable(path: Path, exc: sqlite3.Error) -> LedgerError:
    """A damaged file ("file is not a database"), a full disk: one line, no traceback."""
    reason = disk_reason(exc)
    if reason:
        return LedgerNotWritable(path, reason)
    return LedgerError(f"{path}: cannot use the ledger: {exc}")


def _migrate(path: Path, migrations: list[str]) -> int:
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        current = schema_version(conn)
        if current > len(migrations):
            conn.execute("ROLLBACK")
            raise LedgerError(f"{path}: schema version {current} is newer than this "
                              f"program knows ({len(migrations)}); upgrade the node")
        if current == len(migrations):
            conn.execute("COMMIT")
            return current
        if current > 0:
            conn.execute("COMMIT")  # release the lock for a consistent copy
            backup = path.with_name(f"{path.name}.v{current}.bak")
            src = sqlite3.connect(str(path))
            dst = sqlite3.connect(str(backup))
            src.backup(dst)
            src.close()
            dst.close()
            log.info("ledger: backed up schema v%d to %s", current, backup)
            conn.execute("BEGIN IMMEDIATE")
            current = schema_version(conn)
        try:
            if current == 0:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            for number in range(current + 1, len(migrations) + 1):
                for statement in migrations[number - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (number,))
                log.info("ledger: migrated %s to schema v%d", path, number)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise LedgerError(f"{path}: migration failed, file left unchanged: {exc}") from exc
        return len(migrations)
    finally:
        conn.close()


def backup_exists(path: Path) -> bool:
    return any(path.parent.glob(path.name + ".v*.bak"))


class Ledger:
    """One connection per process; open with `Ledger.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time,
                 catalogue: Mapping[str, type[Message]] = CATALOGUE) -> None:
        self.conn = conn
        self.clock = clock
        self.catalogue = catalogue
        self.mark = catalogue_mark(catalogue)
        self.path: Path | None = None   # for messages; set by open()
        self.synchronous = "FULL"       # as _connect sets it; transaction(durable) changes it
        # why the last transaction could not be written ("disk full"), None once one is
        self.write_problem: str | None = None

    @classmethod
    def open(cls, path: Path, clock: Callable[[], float] = time.time,
             catalogue: Mapping[str, type[Message]] = CATALOGUE) -> Ledger:
        """Create or migrate, then open; LedgerNotWritable when the disk refuses."""
        migrate(path)
        try:
            ledger = cls(_connect(path), clock, catalogue)
        except sqlite3.Error as exc:
            raise unusable(path, exc) from exc
        ledger.path = path
        return ledger

    @classmethod
    def open_existing(cls, path: Path) -> Ledger:
        """Open for reading only: a missing ledger, or one of another schema version, is a
        LedgerError, and nothing is created or migrated (what lthnctl reports from)."""
        if not path.exists():
            raise LedgerMissing(f"{path}: no ledger there (the node creates it when it "
                                "first starts; is this the node's config?)")
        conn = _connect_read_only(path)
        try:
            current = schema_version(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerUnreadable(f"{path}: cannot read the ledger: {exc}") from None
        if current != len(MIGRATIONS):
            conn.close()
            if current == 0:
                raise LedgerUnreadable(f"{path}: not a ledger yet (schema version 0)")
            if current > len(MIGRATIONS):
                raise LedgerError(f"{path}: schema version {current} is newer than this "
                                  f"program knows ({len(MIGRATIONS)}); upgrade the node")
            raise LedgerError(f"{path}: schema version {current} is older than this program "
                              f"reads ({len(MIGRATIONS)}); start the node once to migrate it")
        ledger = cls(conn)
        ledger.path = path
        return ledger

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any error. A write the disk refuses
        raises LedgerNotWritable (and sets `write_problem`) instead of sqlite3's error.

        `durable=False` (only sessiond's tick: charges of time in use, never a payment,
        a grant or an operator's change) commits without waiting for the disk
        (`synchronous=NORMAL` in WAL mode): still atomic and safe against the crash of
        any process, but a power cut may forget the last ticks' charges, time the
        clients then got for free; the next durable commit makes them durable too.
        bench/bench_scale.py: with 9,900 live sessions, one tick in ten waited 100-300 ms
        for its disk sync on a busy disk, though it needed 25-40 ms of CPU."""
        wanted = "FULL" if durable else "NORMAL"
        try:
            if wanted != self.synchronous:
                self.conn.execute(f"PRAGMA synchronous={wanted}")
                self.synchronous = wanted
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self.conn, self.clock())
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back by itself already (disk full, I/O error)
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            reason = disk_reason(exc)
            if reason is None:
                raise
            self.write_problem = reason
            raise LedgerNotWritable(self.path, reason) from exc
        self.write_problem = None

    # --- reads outside a transaction (a consistent snapshot each) ---

    def active_authids(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT authid FROM authids WHERE state = 'ACTIVE' ORDER BY authid")]

    def authid(self, authid: str) -> AuthidRow | None:
        return Tx(self.conn, self.clock()).authid(authid)

    def change_seq(self) -> int:
        """The newest authid change number (migration 3); 0 on an empty ledger."""
        return Tx(self.conn, self.clock()).change_seq()

    def authid_changes(self, after: int, limit: int = 10_000) -> list[AuthidChange]:
        """Authids whose state, credit or service changed after change number `after`,
        oldest change first (each authid once, with its newest number)."""
        return [AuthidChange(*r) for r in self.conn.execute(
            "SELECT change_seq, authid, service_id, state FROM authids WHERE change_seq > ? "
            "ORDER BY change_seq LIMIT ?", (after, limit))]

    def payments_of(self, authid: str) -> list[PaymentRow]:
        return [_payment(r) for r in self.conn.execute(
            f"SELECT {_PAYMENT_COLS} FROM payments WHERE authid = ? ORDER BY first_seen, txid",
            (authid,))]

    def meta(self, key: str) -> str | None:
        return Tx(self.conn, self.clock()).meta(key)

    def watched_payments(self, confirmations_below: int) -> list[PaymentRow]:
        """Payments still moving (see Tx.watched_payments), read without a write lock."""
        return Tx(self.conn, self.clock()).watched_payments(confirmations_below)

    def rejected(self) -> list[tuple[str, str, int, str]]:
        return list(self.conn.execute(
            "SELECT txid, payment_id, amount, reason FROM rejected_transfers ORDER BY seen"))

    def open_sessions(self, kind: str | None = None) -> list[SessionRow]:
        return Tx(self.conn, self.clock()).open_sessions(kind)

    def audit_lines(self, authid: str | None = None) -> list[tuple[str, str, str, dict]]:
        rows = self.conn.execute(
            "SELECT actor, event, authid, detail FROM audit "
            + ("WHERE authid = ? " if authid else "") + "ORDER BY id",
            (authid,) if authid else ())
        return [(a, e, i, json.loads(d)) for a, e, i, d in rows]

    # --- reports for lthnctl and watchd (issue #19): plain reads, no write lock ---

    def count_authids(self) -> dict[str, int]:
        """How many authids are in each state."""
        return {state: n for state, n in self.conn.execute(
            "SELECT state, COUNT(*) FROM authids GROUP BY state")}

    def list_authids(self, state: str | None = None, service_id: str | None = None,
                     limit: int = 1000) -> list[AuthidRow]:
        """Authids, most recently changed first, optionally of one state and service."""
        where, args = _filters({"state = ?": state, "service_id = ?": service_id})
        return [AuthidRow(*r) for r in self.conn.execute(
            f"SELECT {_AUTHID_COLS} FROM authids{where} ORDER BY modified DESC, authid "
            "LIMIT ?", (*args, limit))]

    def count_open_sessions(self) -> dict[tuple[str, str], int]:
        """Open sessions per (service id, kind)."""
        return {(service, kind): n for service, kind, n in self.conn.execute(
            "SELECT upper(substr(authid, 1, 2)), kind, COUNT(*) FROM sessions "
            "WHERE state = 'OPEN' GROUP BY 1, 2")}

    def session(self, session_id: int) -> SessionRow | None:
        row = self.conn.execute(f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?",
                                (session_id,)).fetchone()
        return SessionRow(*row) if row else None

    def list_sessions(self, open_only: bool = True, authid: str | None = None,
                      kind: str | None = None, limit: int = 1000) -> list[SessionRow]:
        """Sessions, newest first: open ones only, or every one (closed included)."""
        where, args = _filters({"state = ?": "OPEN" if open_only else None,
                                "authid = ?": authid, "kind = ?": kind})
        return [SessionRow(*r) for r in self.conn.execute(
            f"SELECT {_SESSION_COLS} FROM sessions{where} ORDER BY id DESC LIMIT ?",
            (*args, limit))]

    def payment_totals(self) -> dict[str, tuple[int, int]]:
        """(count, amount) of payments in each state (pool, mined, revoked, ...)."""
        return {state: (n, int(total)) for state, n, total in self.conn.execute(
            "SELECT state, COUNT(*), COALESCE(SUM(amount), 0) FROM payments GROUP BY state")}

    def ban(self, ip: str) -> BanRow | None:
        """The ban row of `ip` (in force or ended), or None: read without a write lock."""
        return Tx(self.conn, self.clock()).ban(ip)

    def bans(self, now: float | None = None) -> list[BanRow]:
        """Bans in force at `now` (default: the clock), soonest to expire first."""
        at = self.clock() if now is None else now
        return [BanRow(*r) for r in self.conn.execute(
            f"SELECT {_BAN_COLS} FROM bans WHERE expires > ? ORDER BY expires, ip", (at,))]

    def bans_ended(self, since: float, until: float) -> list[BanRow]:
        """Bans whose end falls in (since, until]: expired, or lifted by hand."""
        return [BanRow(*r) for r in self.conn.execute(
            f"SELECT {_BAN_COLS} FROM bans WHERE expires > ? AND expires <= ? ORDER BY ip",
            (since, until))]

    def audit_after(self, last_id: int, limit: int = 1000) -> list[AuditRow]:
        """Audit lines with an id above `last_id`, oldest first (the audit file writer)."""
        return [AuditRow(i, at, actor, event, authid, json.loads(detail))
                for i, at, actor, event, authid, detail in self.conn.execute(
                    "SELECT id, at, actor, event, authid, detail FROM audit WHERE id > ? "
                    "ORDER BY id LIMIT ?", (last_id, limit))]

    def take_outbox(self, limit: int = 1000) -> list[Message]:
        """Claim queued messages for publishing, oldest first: each row is decoded before
        it is deleted. A row that does not decode (unknown topic or version, broken body)
        is kept and marked stuck under this program's catalogue mark, logged once, and
        skipped until a program with another catalogue (an upgrade) tries it (#13)."""
        # a plain read first: the daemon loop asks on every turn, and an outbox that is
        # empty (or holds only rows this program already failed) must not cost a write
        # lock that paymentd and sessiond would then wait for
        if not self.conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM outbox WHERE {_TAKEABLE})",
                (self.mark, self.mark)).fetchone()[0]:
            return []
        out: list[Message] = []
        stuck: list[tuple[int, str, int, str]] = []
        with self.transaction() as tx:
            while len(out) < limit:
                want = limit - len(out)
                rows = self.conn.execute(
                    f"SELECT id, topic, version, body FROM outbox WHERE {_TAKEABLE} "
                    "ORDER BY id LIMIT ?", (self.mark, self.mark, want)).fetchall()
                taken = []
                for row_id, topic, version, body in rows:
                    try:
                        out.append(decode_outbox_row(self.catalogue, topic, version, body))
                        taken.append((row_id,))
                    except BadMessage as exc:
                        stuck.append((row_id, topic, version, str(exc)))
                        self.conn.execute(
                            "UPDATE outbox SET stuck = ?, stuck_by = ?, stuck_at = ? "
                            "WHERE id = ?", (str(exc), self.mark, tx.now, row_id))
                self.conn.executemany("DELETE FROM outbox WHERE id = ?", taken)
                if len(rows) < want:
                    break
        for row_id, topic, version, reason in stuck:
            log.error("outbox row %d (%s v%s): stuck, kept unpublished: %s", row_id, topic,
                      version, reason)
        return out

    def outbox_counts(self) -> OutboxCounts:
        queued, stuck = self.conn.execute(
            "SELECT COUNT(*) - COUNT(stuck), COUNT(stuck) FROM outbox").fetchone()
        return OutboxCounts(int(queued), int(stuck))

    def stuck_outbox(self, limit: int = 100) -> list[StuckRow]:
        """The oldest stuck outbox rows, with why each could not be decoded."""
        return [StuckRow(*r) for r in self.conn.execute(
            "SELECT id, topic, version, stuck, stuck_at FROM outbox "
            "WHERE stuck IS NOT NULL ORDER BY id LIMIT ?", (limit,))]


# rows to try: never tried, or stuck under another catalogue than this program's; written
# as two ranges, not `<>`, so the (stuck_by, id) index answers it
_TAKEABLE = "(stuck_by IS NULL OR stuck_by < ? OR stuck_by > ?)"


def _filters(conditions: dict[str, Any]) -> tuple[str, list[Any]]:
    """` WHERE a = ? AND b = ?` for the conditions whose value is given, and the values."""
    given = {sql: value for sql, value in conditions.items() if value}
    where = " WHERE " + " AND ".join(given) if given else ""
    return where, list(given.values())


# authids in one `IN (...)` list: far below SQLite's 32,766 variables and PostgreSQL's
# 65,535 parameters (sessions_of_many lists each twice)
BATCH = 500


def _batches(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start:start + BATCH]


def _distinct(keys: Sequence[object], what: str) -> None:
    """A batched verb changes each row once: a key given twice is the caller's bug."""
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what}: the same row given twice")


def _payment(row: tuple) -> PaymentRow:
    return PaymentRow(*row[:6], bool(row[6]), *row[7:])


_AUTHID_COLS = ("authid, service_id, state, created, modified, activations, activated_at, "
                "spending_since, last_used, credit, pending, spent, charged_ms, payments")
_PAYMENT_COLS = ("txid, authid, amount, height, confirmations, state, spendable, ordinal, "
                 "first_seen, updated")
_SESSION_COLS = ("id, kind, authid, source, adapter_ref, state, started, ended, end_reason, "
                 "bytes_in, bytes_out")
_BAN_COLS = "ip, reason, created, expires, count"


class Tx:
    """Operations inside one open transaction. `now` is the transaction's clock reading."""

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self.conn = conn
        self.now = now

    # --- meta ---
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # --- authids ---
    def authid(self, authid: str) -> AuthidRow | None:
        row = self.conn.execute(
            f"SELECT {_AUTHID_COLS} FROM authids WHERE authid = ?", (authid,)).fetchone()
        return AuthidRow(*row) if row else None

    def ensure_authid(self, authid: str, service_id: str) -> AuthidRow:
        self.conn.execute(
            "INSERT INTO authids (authid, service_id, state, created, modified) "
            "VALUES (?, ?, 'PENDING', ?, ?) ON CONFLICT (authid) DO NOTHING",
            (authid, service_id, self.now, self.now))
        row = self.authid(authid)
        assert row is not None
        return row

    # --- money and access verbs: the UPDATE does the arithmetic and returns the fresh
    # row, so no count is read into Python, changed and written back (#13) ---
    def credit(self, authid: str, amount: int, payment: bool = False) -> AuthidRow:
        """Add spendable credit; `payment` counts one more live payment."""
        return self._change(authid, "credit = credit + ?, payments = payments + ?",
                            (amount, int(payment)), counted=True)

    def add_pending(self, authid: str, amount: int, payment: bool = False) -> AuthidRow:
        """Add credit that is not spendable yet; `payment` counts one more live payment."""
        return self._change(authid, "pending = pending + ?, payments = payments + ?",
                            (amount, int(payment)))

    def release_pending(self, authid: str, amount: int) -> AuthidRow:
        """Pending -> credit: a payment got the confirmations its place needs."""
        return self._change(authid, "pending = pending - ?, credit = credit + ?",
                            (amount, amount), counted=True)

    def revoke(self, authid: str, amount: int, from_pending: bool) -> AuthidRow:
        """Take a payment's amount back (from pending or from credit) and uncount it."""
        column = "pending" if from_pending else "credit"
        return self._change(authid, f"{column} = {column} - ?, payments = payments - 1",
                            (amount,), counted=not from_pending)

    def spend(self, authid: str, amount: int, ms: int) -> AuthidRow:
        """Charge `amount` for `ms` of use, now."""
        return self._change(authid, "spent = spent + ?, charged_ms = charged_ms + ?, "
                            "last_used = ?", (amount, ms, self.now))

    def spend_many(self, charges: Sequence[tuple[AuthidRow, int, int]]) -> list[AuthidRow]:
        """`spend` of many authids in one statement (a tick charges hundreds, #16): each
        (its row as read in this transaction, amount, ms). The statement adds to what the
        ledger holds, as `spend` does; the rows returned are the given ones with the same
        additions (what the ledger now holds, as no one else writes during the
        transaction). Raises NotApplied, rolling back, when an authid is not there."""
        _distinct([row.authid for row, _, _ in charges], "spend_many")
        self._update_all(
            "UPDATE authids SET spent = spent + ?, charged_ms = charged_ms + ?, "
            "last_used = ?, modified = ? WHERE authid = ?",
            [(amount, ms, self.now, self.now, row.authid) for row, amount, ms in charges],
            "spend_many")
        return [replace(row, spent=row.spent + amount, charged_ms=row.charged_ms + ms,
                        last_used=self.now, modified=self.now) for row, amount, ms in charges]

    def start_spending_many(self, starts: Sequence[tuple[AuthidRow, float]]
                            ) -> list[AuthidRow]:
        """`start_spending` of many authids in one statement (see `spend_many`): each (its
        row as read in this transaction, since). Raises NotApplied, rolling back, when one
        is not ACTIVE without spending."""
        _distinct([row.authid for row, _ in starts], "start_spending_many")
        self._update_all(
            "UPDATE authids SET spending_since = ?, modified = ? WHERE authid = ? "
            "AND state = 'ACTIVE' AND spending_since IS NULL",
            [(since, self.now, row.authid) for row, since in starts], "start_spending_many")
        return [replace(row, spending_since=since, modified=self.now) for row, since in starts]

    def _update_all(self, sql: str, rows: list[tuple], what: str) -> None:
        """One UPDATE statement for many rows, each of which must change exactly one."""
        if not rows:
            return
        changed = self.conn.executemany(sql, rows).rowcount
        if changed != len(rows):
            raise NotApplied(f"{what}: {len(rows) - changed} of {len(rows)} authids not in "
                             "the ledger or not in the state the change leaves")

    def start_spending(self, authid: str, since: float) -> AuthidRow:
        # ACTIVE, not spending -> spending
        return self._change(authid, "spending_since = ?", (since,),
                            "state = 'ACTIVE' AND spending_since IS NULL")

    def activate(self, authid: str) -> AuthidRow:
        # PENDING/DEPLETED -> ACTIVE
        return self._change(authid, "state = 'ACTIVE', activations = activations + 1, "
                            "activated_at = ?, spending_since = NULL", (self.now,),
                            "state <> 'ACTIVE'", counted=True)

    def deactivate(self, authid: str) -> AuthidRow:
        # ACTIVE -> DEPLETED
        return self._change(authid, "state = 'DEPLETED', spending_since = NULL", (),
                            "state = 'ACTIVE'", counted=True)

    def revoke_access(self, authid: str) -> AuthidRow:
        # any -> REVOKED: refused until granted by hand, whatever it pays (#19)
        return self._change(authid, "state = 'REVOKED', spending_since = NULL", (),
                            "state <> 'REVOKED'", counted=True)

    def _change(self, authid: str, assignments: str, args: tuple,
                guard: str = "", counted: bool = False) -> AuthidRow:
        if counted:
            # a change of access or credit: the next change number (migration 4), read by
            # authd and sessiond to find what changed (#16); transactions are serial here
            assignments += ", change_seq = (SELECT COALESCE(MAX(change_seq), 0) + 1 " \
                           "FROM authids)"
        rows = self.conn.execute(
            f"UPDATE authids SET {assignments}, modified = ? WHERE authid = ?"
            + (f" AND {guard}" if guard else "") + f" RETURNING {_AUTHID_COLS}",
            (*args, self.now, authid)).fetchall()
        if not rows:
            row = self.authid(authid)
            raise NotApplied(f"authid {authid}: not in the ledger" if row is None else
                             f"authid {authid}: state {row.state}, not changed ({guard})")
        return AuthidRow(*rows[0])

    def change_seq(self) -> int:
        return int(self.conn.execute(
            "SELECT COALESCE(MAX(change_seq), 0) FROM authids").fetchone()[0])

    def authids_changed(self, after: int, limit: int = 10_000
                        ) -> list[tuple[int, AuthidRow]]:
        """(change number, row) of the authids changed after `after` (see
        Ledger.authid_changes), oldest change first, at most `limit`."""
        return [(r[0], AuthidRow(*r[1:])) for r in self.conn.execute(
            f"SELECT change_seq, {_AUTHID_COLS} FROM authids WHERE change_seq > ? "
            "ORDER BY change_seq LIMIT ?", (after, limit))]

    def authids_waiting_to_spend(self, activated_before: float, limit: int) -> list[str]:
        """Active authids not spending yet, activated before `activated_before` (`activate`
        sets it), by the authids_waiting index, oldest first, at most `limit`."""
        return [r[0] for r in self.conn.execute(
            "SELECT authid FROM authids WHERE state = 'ACTIVE' AND spending_since IS NULL "
            "AND activated_at <= ? ORDER BY activated_at LIMIT ?", (activated_before, limit))]

    def authids_spending(self, service_ids: list[str] | None) -> list[str]:
        """Active authids already spending, of these services (None: of any)."""
        sql = "SELECT authid FROM authids WHERE state = 'ACTIVE' AND spending_since IS NOT NULL"
        if service_ids is None:
            return [r[0] for r in self.conn.execute(sql)]
        if not service_ids:
            return []
        marks = ",".join("?" * len(service_ids))
        return [r[0] for r in self.conn.execute(f"{sql} AND service_id IN ({marks})",
                                                service_ids)]

    def authid_rows(self, authids: list[str]) -> dict[str, AuthidRow]:
        """The rows of these authids (those in the ledger), by authid: one statement per
        BATCH authids instead of one each (a tick looks at hundreds, #16)."""
        out: dict[str, AuthidRow] = {}
        for part in _batches(authids):
            out.update((r[0], AuthidRow(*r)) for r in self.conn.execute(
                f"SELECT {_AUTHID_COLS} FROM authids WHERE authid IN "
                f"({','.join('?' * len(part))})", part))
        return out

    def authids_in(self, states: tuple[str, ...]) -> list[AuthidRow]:
        marks = ",".join("?" * len(states))
        return [AuthidRow(*r) for r in self.conn.execute(
            f"SELECT {_AUTHID_COLS} FROM authids WHERE state IN ({marks})", states)]

    # --- payments ---
    def payment(self, txid: str, authid: str) -> PaymentRow | None:
        row = self.conn.execute(
            f"SELECT {_PAYMENT_COLS} FROM payments WHERE txid = ? AND authid = ?",
            (txid, authid)).fetchone()
        return _payment(row) if row else None

    def insert_payment(self, txid: str, authid: str, amount: int, height: int,
                       confirmations: int, state: str, spendable: bool, ordinal: int) -> bool:
        """False when (txid, authid) is already recorded: a replay credits nothing."""
        cur = self.conn.execute(
            "INSERT INTO payments (txid, authid, amount, height, confirmations, state, "
            "spendable, ordinal, first_seen, updated) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (txid, authid) DO NOTHING",
            (txid, authid, amount, height, confirmations, state, int(spendable), ordinal,
             self.now, self.now))
        return cur.rowcount == 1

    def update_payment(self, txid: str, authid: str, height: int, confirmations: int,
                       state: str, spendable: bool) -> None:
        self.conn.execute(
            "UPDATE payments SET height = ?, confirmations = ?, state = ?, spendable = ?, "
            "updated = ? WHERE txid = ? AND authid = ?",
            (height, confirmations, state, int(spendable), self.now, txid, authid))

    def watched_payments(self, confirmations_below: int) -> list[PaymentRow]:
        """Payments still moving: in the pool, not yet spendable, or few confirmations."""
        return [_payment(r) for r in self.conn.execute(
            f"SELECT {_PAYMENT_COLS} FROM payments WHERE state != 'revoked' AND "
            "(state = 'pool' OR spendable = 0 OR confirmations < ?)", (confirmations_below,))]

    def count_live_payments(self, authid: str) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM payments WHERE authid = ? AND state != 'revoked'",
            (authid,)).fetchone()[0]

    def record_rejected(self, txid: str, payment_id: str, amount: int, reason: str) -> bool:
        cur = self.conn.execute(
            "INSERT INTO rejected_transfers (txid, payment_id, amount, reason, seen) "
            "VALUES (?,?,?,?,?) ON CONFLICT (txid, payment_id) DO NOTHING",
            (txid, payment_id, amount, reason, self.now))
        return cur.rowcount == 1

    # --- spends ---
    def add_spend(self, authid: str, amount: int, ms: int, reason: str,
                  period: int = 0) -> tuple[int, int]:
        """Add to the authid's spend row of `period` (minute of use); returns its totals
        (amount, ms) so far."""
        row = self.conn.execute(
            "INSERT INTO spends (authid, period, amount, ms, at, reason) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (authid, period) DO UPDATE SET amount = spends.amount + "
            "excluded.amount, ms = spends.ms + excluded.ms, at = excluded.at "
            "RETURNING amount, ms", (authid, period, amount, ms, self.now, reason)).fetchone()
        return int(row[0]), int(row[1])

    def add_spends(self, spends: Sequence[tuple[str, int, int, str, int]]
                   ) -> list[tuple[int, int]]:
        """`add_spend` of many (authid, amount, ms, reason, period) at once, each (authid,
        period) once: all are written in one statement (a tick charges hundreds, #16).
        Returns each one's totals so far."""
        keys = [(authid, period) for authid, _, _, _, period in spends]
        _distinct(keys, "add_spends")
        before: dict[tuple[str, int], tuple[int, int]] = {}
        for key in keys:
            # one indexed look each: a statement listing them all scans the table (or,
            # as ORs, costs more to prepare than these take)
            had = self.conn.execute("SELECT amount, ms FROM spends WHERE authid = ? "
                                    "AND period = ?", key).fetchone()
            if had is not None:
                before[key] = (int(had[0]), int(had[1]))
        if spends:
            self.conn.executemany(
                "INSERT INTO spends (authid, period, amount, ms, at, reason) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (authid, period) DO UPDATE SET amount = "
                "spends.amount + excluded.amount, ms = spends.ms + excluded.ms, "
                "at = excluded.at",
                [(authid, period, amount, ms, self.now, reason)
                 for authid, amount, ms, reason, period in spends])
        totals = []
        for (authid, amount, ms, _, period) in spends:
            had_amount, had_ms = before.get((authid, period), (0, 0))
            totals.append((had_amount + amount, had_ms + ms))
        return totals

    def spends_total(self, authid: str) -> int:
        return self.conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM spends WHERE authid = ?",
            (authid,)).fetchone()[0]

    # --- sessions ---
    def open_session(self, kind: str, authid: str, source: str, adapter_ref: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO sessions (kind, authid, source, adapter_ref, state, started) "
            "VALUES (?,?,?,?, 'OPEN', ?)", (kind, authid, source, adapter_ref, self.now))
        return int(cur.lastrowid)

    def close_session(self, session_id: int, reason: str, bytes_in: int,
                      bytes_out: int) -> None:
        self.conn.execute(
            "UPDATE sessions SET state = 'CLOSED', ended = ?, end_reason = ?, bytes_in = ?, "
            "bytes_out = ? WHERE id = ? AND state = 'OPEN'",
            (self.now, reason, bytes_in, bytes_out, session_id))

    def update_session_bytes(self, session_id: int, bytes_in: int, bytes_out: int) -> None:
        self.conn.execute("UPDATE sessions SET bytes_in = ?, bytes_out = ? WHERE id = ?",
                          (bytes_in, bytes_out, session_id))

    def open_sessions(self, kind: str | None = None) -> list[SessionRow]:
        sql = f"SELECT {_SESSION_COLS} FROM sessions WHERE state = 'OPEN'"
        args: tuple = ()
        if kind:
            sql += " AND kind = ?"
            args = (kind,)
        return [SessionRow(*r) for r in self.conn.execute(sql, args)]

    def sessions_of(self, authid: str, ended_after: float) -> list[SessionRow]:
        """An authid's sessions still open or ended after `ended_after`, oldest first
        (what connected billing needs; two halves so both use the (state, authid) index)."""
        return [SessionRow(*r) for r in self.conn.execute(
            f"SELECT {_SESSION_COLS} FROM sessions WHERE state = 'OPEN' AND authid = ? "
            f"UNION ALL SELECT {_SESSION_COLS} FROM sessions WHERE state = 'CLOSED' "
            "AND authid = ? AND ended > ? ORDER BY started, id",
            (authid, authid, ended_after))]

    def sessions_of_many(self, ended_after: Mapping[str, float]
                         ) -> dict[str, list[SessionRow]]:
        """`sessions_of` for many authids at once ({authid: ended_after}): each one's
        sessions still open or ended after its own time, oldest first; an authid without
        any is left out. One statement per BATCH authids (a tick looks at hundreds, #16)."""
        out: dict[str, list[SessionRow]] = {}
        if not ended_after:
            return out
        earliest = min(ended_after.values())
        for part in _batches(list(ended_after)):
            marks = ",".join("?" * len(part))
            for r in self.conn.execute(
                    f"SELECT {_SESSION_COLS} FROM sessions WHERE state = 'OPEN' AND authid "
                    f"IN ({marks}) UNION ALL SELECT {_SESSION_COLS} FROM sessions WHERE "
                    f"state = 'CLOSED' AND authid IN ({marks}) AND ended > ? "
                    "ORDER BY started, id", (*part, *part, earliest)):
                row = SessionRow(*r)
                if row.ended is None or row.ended > ended_after[row.authid]:
                    out.setdefault(row.authid, []).append(row)
        return out

    def authids_owing_session_time(self, grace: float) -> set[str]:
        """Active, spending authids with a closed session that ended (plus `grace`
        seconds) after they were last charged: time sessiond may still have to charge
        after a restart. Reads every closed session: for a start, not for a tick."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT s.authid FROM sessions s JOIN authids a ON a.authid = s.authid "
            "WHERE s.state = 'CLOSED' AND a.state = 'ACTIVE' "
            "AND a.spending_since IS NOT NULL "
            "AND s.ended + ? > CASE WHEN a.last_used > a.spending_since THEN a.last_used "
            "ELSE a.spending_since END", (grace,))}

    # --- bans (firewalld owns them, #17; lthnctl asks firewalld, #19) ---
    def ban(self, ip: str) -> BanRow | None:
        """The ban row of `ip` (in force or ended), or None."""
        row = self.conn.execute(f"SELECT {_BAN_COLS} FROM bans WHERE ip = ?", (ip,)).fetchone()
        return BanRow(*row) if row else None

    def add_ban(self, ip: str, reason: str, expires: float, count: int | None = None) -> BanRow:
        """Ban `ip` until `expires` as its `count`-th ban (None: one more than before). A
        ban already in force is extended, never shortened."""
        row = self.conn.execute(
            "INSERT INTO bans (ip, reason, created, expires, count) "
            "VALUES (?,?,?,?, COALESCE(?, 1)) "
            "ON CONFLICT (ip) DO UPDATE SET reason = excluded.reason, "
            "count = COALESCE(?, bans.count + 1), "
            "created = CASE WHEN bans.expires > excluded.created THEN bans.created "
            "ELSE excluded.created END, "
            "expires = CASE WHEN bans.expires > excluded.expires THEN bans.expires "
            f"ELSE excluded.expires END RETURNING {_BAN_COLS}",
            (ip, reason, self.now, expires, count, count)).fetchone()
        return BanRow(*row)

    def lift_ban(self, ip: str) -> BanRow | None:
        """End the ban on `ip` now (the row stays, for its count); None when none is in
        force."""
        row = self.conn.execute(
            f"UPDATE bans SET expires = ? WHERE ip = ? AND expires > ? RETURNING {_BAN_COLS}",
            (self.now, ip, self.now)).fetchone()
        return BanRow(*row) if row else None

    # --- audit and outbox: every change of money or access passes here ---
    def audit(self, actor: str, event: str, authid: str, **detail: Any) -> None:
        self.audit_many(actor, event, [(authid, detail)])

    def audit_many(self, actor: str, event: str,
                   lines: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """`audit` of many (authid, detail) of one actor and event, in one statement."""
        if lines:
            self.conn.executemany(
                "INSERT INTO audit (at, actor, event, authid, detail) VALUES (?,?,?,?,?)",
                [(self.now, actor, event, authid, json.dumps(dict(detail), sort_keys=True))
                 for authid, detail in lines])

    def emit_many(self, messages: Sequence[Message]) -> None:
        """`emit` of many messages, in one statement, in order."""
        if messages:
            self.conn.executemany(
                "INSERT INTO outbox (topic, version, body) VALUES (?, ?, ?)",
                [(msg.topic, msg.version, msgpack.packb(msg.fields(), use_bin_type=True))
                 for msg in messages])

    def emit(self, msg: Message) -> None:
        """Queue a bus message; it is published after commit (see Ledger.take_outbox)."""
        self.emit_many([msg])
