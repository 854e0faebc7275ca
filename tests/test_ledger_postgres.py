"""Every SQL statement the ledger runs is one PostgreSQL accepts too (#13).

ROADMAP: several nodes will share one ledger on PostgreSQL, so lthn/ledger.py keeps to SQL
both engines accept. This runs each public ledger operation on SQLite with the statements
recorded, then has a real PostgreSQL server (unix socket only, in a temp dir) create the
schema from MIGRATIONS and PREPARE every recorded statement: a parse, name resolution,
ON CONFLICT arbiter and type check, so `INSERT OR IGNORE`, `IFNULL`, two-argument
`MIN(a, b)` or an upsert without a matching unique index fail here.

What is SQLite's by necessity and not checked: PRAGMAs and `BEGIN IMMEDIATE` (connection
and locking setup), `sqlite_master` (schema_version), and the type name BLOB in migration 1
(PostgreSQL spells it BYTEA; the schema is created with that one word replaced).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lthn.ledger import MIGRATIONS, Ledger, Tx
from lthn.messages import AuthidCharged
from tests.fixtures.common import wait_for

A = "1A00112233445566"
TX1, TX2 = "aa" * 32, "bb" * 32


def postgres_bin() -> Path:
    """Debian keeps the server programs in /usr/lib/postgresql/N/bin, off PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]))
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    if found is None:
        pytest.fail("PostgreSQL is missing (initdb not found): run ./scripts/setup, which "
                    "installs Debian's postgresql", pytrace=False)
    return Path(found).resolve().parent


class Postgres:
    """A throwaway server: its own data dir, no TCP, trust auth for one local user."""

    def __init__(self, root: Path) -> None:
        self.bin = postgres_bin()
        self.root = root
        # the server refuses to run as root; CI runs as root, so it runs as `postgres`
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(root, "postgres", "postgres")
        self.data = root / "data"
        self.log = root / "server.log"
        subprocess.run([*self.as_owner, str(self.bin / "initdb"), "-D", str(self.data),
                        "-U", "lthn", "-A", "trust", "--no-sync"], check=True,
                       capture_output=True, timeout=120)
        self.proc = subprocess.Popen(
            [*self.as_owner, str(self.bin / "postgres"), "-D", str(self.data),
             "-k", str(root), "-c", "listen_addresses=", "-c", "fsync=off"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"PostgreSQL exited: {self.log.read_text()[-2000:]}")
            return subprocess.run([str(self.bin / "pg_isready"), "-h", str(self.root),
                                   "-U", "lthn", "-q"], timeout=30, check=False).returncode == 0
        wait_for(ready, timeout=timeout, interval=0.1, what="PostgreSQL accepting connections")

    def psql(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "psql"), "-h", str(self.root), "-U", "lthn", "-d", "postgres",
             "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=script, capture_output=True, text=True, timeout=120, check=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)   # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    # not tmp_path: the server's user cannot enter pytest's root-only temp dirs
    root = Path(tempfile.mkdtemp(prefix="lthn-pg-"))
    server = None
    try:
        server = Postgres(root)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


class Recorder:
    """Stands in for the ledger's connection and keeps every statement it is given."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        self.statements.append(sql)
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self.statements.append(sql)
        return self.conn.executemany(sql, rows)

    def close(self) -> None:
        self.conn.close()


def tx_workload() -> dict[str, Callable[[Tx], object]]:
    """One call of every public Tx method, in an order that makes each one do its work."""
    return {
        "ensure_authid": lambda tx: tx.ensure_authid(A, "1A"),
        "authid": lambda tx: tx.authid(A),
        "meta": lambda tx: tx.meta("k"),
        "set_meta": lambda tx: tx.set_meta("k", "v"),
        "credit": lambda tx: tx.credit(A, 6000, payment=True),
        "add_pending": lambda tx: tx.add_pending(A, 100, payment=True),
        "release_pending": lambda tx: tx.release_pending(A, 50),
        "revoke": lambda tx: tx.revoke(A, 50, from_pending=True),
        "activate": lambda tx: tx.activate(A),
        "start_spending_many": lambda tx: tx.start_spending_many([(tx.authid(A), 1.0)]),
        "start_spending": lambda tx: (tx.deactivate(A), tx.activate(A),
                                      tx.start_spending(A, 1.0)),
        "spend": lambda tx: tx.spend(A, 10, 1000),
        "spend_many": lambda tx: tx.spend_many([(tx.authid(A), 10, 1000)]),
        "deactivate": lambda tx: tx.deactivate(A),
        "revoke_access": lambda tx: tx.revoke_access(A),
        "authids_in": lambda tx: tx.authids_in(("ACTIVE", "DEPLETED")),
        "authid_rows": lambda tx: tx.authid_rows([A, "1B00112233445566"]),
        "insert_payment": lambda tx: tx.insert_payment(TX1, A, 5, 1, 0, "pool", False, 1),
        "payment": lambda tx: tx.payment(TX1, A),
        "update_payment": lambda tx: tx.update_payment(TX1, A, 2, 1, "in", True),
        "watched_payments": lambda tx: tx.watched_payments(10),
        "count_live_payments": lambda tx: tx.count_live_payments(A),
        "record_rejected": lambda tx: tx.record_rejected(TX2, "zz", 1, "bad payment id"),
        "add_spend": lambda tx: tx.add_spend(A, 10, 1000, "time", 0),
        "add_spends": lambda tx: tx.add_spends([(A, 10, 1000, "time", 0),
                                                (A, 1, 10, "time", 1)]),
        "spends_total": lambda tx: tx.spends_total(A),
        "open_session": lambda tx: tx.open_session("proxy", A, "127.0.0.1", "ref"),
        "update_session_bytes": lambda tx: tx.update_session_bytes(1, 10, 20),
        "open_sessions": lambda tx: tx.open_sessions("proxy"),
        "close_session": lambda tx: tx.close_session(1, "ended", 10, 20),
        "sessions_of": lambda tx: tx.sessions_of(A, 0.0),
        "sessions_of_many": lambda tx: tx.sessions_of_many({A: 0.0, "1B00112233445566": 1.0}),
        "audit": lambda tx: tx.audit("test", "credited", A, amount=1),
        "emit": lambda tx: tx.emit(AuthidCharged(authid=A, amount=1, balance=0)),
        "audit_many": lambda tx: tx.audit_many("test", "charged", [(A, {"amount": 1})]),
        "emit_many": lambda tx: tx.emit_many([AuthidCharged(authid=A, amount=1, balance=0)]),
        "add_ban": lambda tx: (tx.add_ban("192.0.2.1", "probe", tx.now + 60),
                               tx.add_ban("192.0.2.1", "again", tx.now + 30),
                               tx.add_ban("192.0.2.2", "escalated", tx.now + 60, 3)),
        "ban": lambda tx: tx.ban("192.0.2.1"),
        "lift_ban": lambda tx: tx.lift_ban("192.0.2.1"),
        "change_seq": lambda tx: tx.change_seq(),
        "authids_changed": lambda tx: tx.authids_changed(0, 10),
        "authids_waiting_to_spend": lambda tx: tx.authids_waiting_to_spend(tx.now, 10),
        "authids_spending": lambda tx: (tx.authids_spending(None),
                                        tx.authids_spending(["1A", "1B"])),
        "authids_owing_session_time": lambda tx: tx.authids_owing_session_time(60.0),
    }


def ledger_workload(path: Path) -> dict[str, Callable[[Ledger], object]]:
    def stuck_then_take(ledger: Ledger) -> object:
        conn = sqlite3.connect(str(path))
        conn.execute("INSERT INTO outbox (topic, version, body) VALUES ('x.y', 1, x'80')")
        conn.commit()
        conn.close()
        return ledger.take_outbox()
    return {
        "active_authids": lambda led: led.active_authids(),
        "authid": lambda led: led.authid(A),
        "payments_of": lambda led: led.payments_of(A),
        "meta": lambda led: led.meta("k"),
        "watched_payments": lambda led: led.watched_payments(10),
        "rejected": lambda led: led.rejected(),
        "open_sessions": lambda led: led.open_sessions(),
        "audit_lines": lambda led: (led.audit_lines(), led.audit_lines(A)),
        "take_outbox": stuck_then_take,
        "outbox_counts": lambda led: led.outbox_counts(),
        "stuck_outbox": lambda led: led.stuck_outbox(),
        "count_authids": lambda led: led.count_authids(),
        "list_authids": lambda led: (led.list_authids(), led.list_authids("ACTIVE", "1A")),
        "count_open_sessions": lambda led: led.count_open_sessions(),
        "session": lambda led: led.session(1),
        "list_sessions": lambda led: (led.list_sessions(), led.list_sessions(False, A, "proxy")),
        "payment_totals": lambda led: led.payment_totals(),
        "bans": lambda led: led.bans(),
        "bans_ended": lambda led: led.bans_ended(0.0, 1e10),
        "audit_after": lambda led: led.audit_after(0),
        "change_seq": lambda led: led.change_seq(),
        "authid_changes": lambda led: led.authid_changes(0, 10),
        "ban": lambda led: led.ban("192.0.2.1"),
    }


# Ledger methods that open or close rather than run the node's SQL
NOT_WORKLOAD = {"open", "open_existing", "close", "transaction"}


def public_methods(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_") and callable(
        getattr(cls, name))}


def recorded_statements(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    recorder = Recorder(ledger.conn)
    ledger.conn = recorder      # type: ignore[assignment]
    try:
        with ledger.transaction() as tx:
            for call in tx_workload().values():
                call(tx)
        for call in ledger_workload(path).values():
            call(ledger)
    finally:
        ledger.close()
    return list(dict.fromkeys(recorder.statements))   # each distinct one, in order


SQLITE_ONLY = re.compile(r"^\s*(PRAGMA|BEGIN IMMEDIATE|COMMIT|ROLLBACK)\b|sqlite_master", re.I)


def as_postgres(sql: str) -> str:
    """`?` placeholders -> `$1, $2, ...` (no statement has a `?` inside a literal)."""
    numbers = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


def prepare_and_plan(name: str, sql: str) -> str:
    """PREPARE parses and resolves names and types; planning it (EXPLAIN, nothing runs)
    also infers an upsert's arbiter index, which PREPARE alone leaves for later."""
    nulls = ", ".join(["NULL"] * sql.count("$"))
    return (f"PREPARE {name} AS {sql};\n"
            f"EXPLAIN EXECUTE {name}{f'({nulls})' if nulls else ''};\n"
            f"DEALLOCATE {name};\n")


def test_the_workload_calls_every_public_ledger_method():
    """A method added to the ledger must join the workload below, or its SQL goes
    unchecked."""
    assert public_methods(Tx) == set(tx_workload())
    assert public_methods(Ledger) - NOT_WORKLOAD == set(ledger_workload(Path()))


def test_every_ledger_statement_is_accepted_by_postgresql(tmp_path, postgres):
    schema = ";\n".join(re.sub(r"\bBLOB\b", "BYTEA", migration).strip().rstrip(";")
                        for migration in MIGRATIONS) + ";\n"
    created = postgres.psql(schema)
    assert created.returncode == 0, f"PostgreSQL refused the schema: {created.stderr}"
    checked = [sql for sql in recorded_statements(tmp_path) if not SQLITE_ONLY.search(sql)]
    assert len(checked) >= 40           # the workload really ran through the recorder
    refused = []
    for n, sql in enumerate(checked):
        result = postgres.psql(prepare_and_plan(f"s{n}", as_postgres(sql)))
        if result.returncode != 0:
            refused.append(f"{sql}\n  -> {result.stderr.strip()}")
    assert not refused, "PostgreSQL refuses:\n" + "\n".join(refused)


def test_postgresql_refuses_what_only_sqlite_accepts(postgres):
    """The check can fail: SQLite-only forms are refused by the same server."""
    made = postgres.psql("CREATE TABLE forms (k TEXT PRIMARY KEY, n INTEGER);")
    assert made.returncode == 0, made.stderr
    for sql in ("INSERT OR IGNORE INTO forms (k, n) VALUES ($1, $2)",
                "SELECT IFNULL(n, 0) FROM forms",
                "SELECT MIN(n, $1) FROM forms",
                "INSERT INTO forms (k, n) VALUES ($1, $2) ON CONFLICT (n) DO NOTHING"):
        assert postgres.psql(prepare_and_plan("s", sql)).returncode != 0, sql
    assert postgres.psql(prepare_and_plan(                 # and the same, right, passes
        "s", "INSERT INTO forms (k, n) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING")).returncode == 0
