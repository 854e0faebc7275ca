"""The ledger file: migrations (from every older version), refusal of a newer schema,
exactly-once payments and a claim-once outbox, with several connections at once."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import sqlite3
import subprocess
import threading
from pathlib import Path

import msgpack
import pytest
import yaml

from lthn import ledger as ledger_mod
from lthn.ledger import (
    MIGRATIONS,
    Ledger,
    LedgerError,
    LedgerMissing,
    NotApplied,
    OutboxCounts,
    backup_exists,
    migrate,
    schema_version,
)
from lthn.messages import CATALOGUE, AuthidCharged, Message, message
from lthn.node.supervision import tool

LATEST = len(MIGRATIONS)
# a stand-in for the next migration, appended after the real ones
NEXT = "ALTER TABLE authids ADD COLUMN note TEXT NOT NULL DEFAULT ''"


def version_of(path: Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return schema_version(conn)
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(str(path))
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


@pytest.mark.parametrize("start", ["missing", "empty file"])
def test_migration_from_version_0(tmp_path, start):
    path = tmp_path / "ledger.sqlite"
    if start == "empty file":
        path.write_bytes(b"")
    assert migrate(path) == LATEST
    assert version_of(path) == LATEST
    assert {"authids", "payments", "spends", "sessions", "bans", "audit", "outbox",
            "rejected_transfers", "meta", "schema_version"} <= tables(path)
    assert not backup_exists(path)      # nothing to back up in a new file
    assert migrate(path) == LATEST      # a second run is a no-op


def test_every_older_version_migrates_to_the_newest_keeping_data(tmp_path):
    """With one more migration appended, a v1 file goes to v2, backed up first, data kept."""
    migrations = [*MIGRATIONS, NEXT]
    for start in range(0, len(migrations)):
        path = tmp_path / f"from-v{start}.sqlite"
        if start:
            migrate(path, migrations[:start])
            conn = sqlite3.connect(str(path))
            conn.execute("INSERT INTO authids (authid, service_id, state, created, modified, "
                         "credit) VALUES ('1A00112233445566', '1A', 'ACTIVE', 1, 1, 5000)")
            conn.commit()
            conn.close()
        assert migrate(path, migrations) == len(migrations)
        assert version_of(path) == len(migrations)
        conn = sqlite3.connect(str(path))
        rows = conn.execute("SELECT authid, credit, note FROM authids").fetchall()
        conn.close()
        assert rows == ([("1A00112233445566", 5000, "")] if start else [])
        backup = path.with_name(f"{path.name}.v{start}.bak")
        assert backup.exists() == bool(start)
        if start:
            assert version_of(backup) == start


def test_failed_migration_stops_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    with ledger.transaction() as tx:
        tx.ensure_authid("1A00112233445566", "1A")
    ledger.close()
    broken = [*MIGRATIONS, "ALTER TABLE authids ADD COLUMN x INTEGER; CREATE TABLE payments (x)"]
    with pytest.raises(LedgerError, match="migration failed, file left unchanged"):
        migrate(path, broken)
    assert version_of(path) == LATEST
    conn = sqlite3.connect(str(path))
    columns = [r[1] for r in conn.execute("PRAGMA table_info(authids)")]
    assert "x" not in columns          # the first statement of the failed step rolled back
    assert conn.execute("SELECT COUNT(*) FROM authids").fetchone()[0] == 1
    conn.close()


def newer_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "ledger.sqlite"
    migrate(path)
    conn = sqlite3.connect(str(path))
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def test_newer_schema_is_refused_and_the_file_untouched(tmp_path):
    path = newer_ledger(tmp_path)
    before = digest(path)
    with pytest.raises(LedgerError) as err:
        Ledger.open(path)
    assert str(err.value) == (f"{path}: schema version 99 is newer than this program knows "
                              f"({LATEST}); upgrade the node")
    assert digest(path) == before
    assert not backup_exists(path)


def test_node_refuses_to_start_on_a_newer_ledger(tmp_path):
    path = newer_ledger(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"provider": {"id": "ab" * 32},
                                      "state_dir": str(path.parent)}))
    result = subprocess.run([tool("lthn-node"), "run", "-c", str(config)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: {path}: schema version 99 is newer than this "
                                     f"program knows ({LATEST}); upgrade the node")
    assert not (path.parent / "run" / "supervisord.pid").exists()


def test_insert_payment_is_exactly_once(tmp_path):
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    args = dict(amount=10**10, height=0, confirmations=0, state="pool", spendable=True,
                ordinal=1)
    with ledger.transaction() as tx:
        assert tx.insert_payment("aa" * 32, "1A00112233445566", **args) is True
        assert tx.insert_payment("aa" * 32, "1A00112233445566", **args) is False
        # one transfer may pay several authids: the key is the pair
        assert tx.insert_payment("aa" * 32, "1A00000000000001", **args) is True
    with ledger.transaction() as tx:
        assert tx.insert_payment("aa" * 32, "1A00112233445566", **args) is False
    assert [p.amount for p in ledger.payments_of("1A00112233445566")] == [10**10]
    ledger.close()


def test_insert_payment_once_across_connections(tmp_path):
    """Eight connections race to record the same 50 payments: each is inserted once."""
    path = tmp_path / "ledger.sqlite"
    migrate(path)
    wins: list[str] = []
    lock = threading.Lock()

    def racer() -> None:
        ledger = Ledger.open(path)
        try:
            for n in range(50):
                with ledger.transaction() as tx:
                    if tx.insert_payment(f"{n:064x}", "1A00112233445566", 1, 0, 0, "pool",
                                         True, n + 1):
                        with lock:
                            wins.append(f"{n:064x}")
        finally:
            ledger.close()

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(wins) == [f"{n:064x}" for n in range(50)]


def test_outbox_take_is_claim_once(tmp_path):
    """500 queued messages taken by four connections at once: each is taken exactly once,
    and each taker gets its messages in the order they were queued."""
    path = tmp_path / "ledger.sqlite"
    writer = Ledger.open(path)
    with writer.transaction() as tx:
        for n in range(500):
            tx.emit(AuthidCharged(authid="1A00112233445566", amount=n, balance=0))
    writer.close()
    taken: list[list[int]] = []
    lock = threading.Lock()

    def taker() -> None:
        ledger = Ledger.open(path)
        mine: list[int] = []
        try:
            while batch := ledger.take_outbox(limit=7):
                mine += [m.amount for m in batch]
        finally:
            ledger.close()
        with lock:
            taken.append(mine)

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    everything = [n for mine in taken for n in mine]
    assert sorted(everything) == list(range(500))
    assert all(mine == sorted(mine) for mine in taken)
    ledger = Ledger.open(path)
    assert ledger.take_outbox() == []
    ledger.close()


def test_outbox_of_a_rolled_back_transaction_is_empty(tmp_path):
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with pytest.raises(RuntimeError), ledger.transaction() as tx:
        tx.emit(AuthidCharged(authid="1A00112233445566", amount=1, balance=0))
        raise RuntimeError("boom")
    assert ledger.take_outbox() == []
    ledger.close()


# --- the versioned outbox (#13) ---

A = "1A00112233445566"


def raw_outbox(path: Path, topic: str, version: int, body: bytes) -> None:
    """Queue a row as some other program would have written it."""
    conn = sqlite3.connect(str(path))
    conn.execute("INSERT INTO outbox (topic, version, body) VALUES (?, ?, ?)",
                 (topic, version, body))
    conn.commit()
    conn.close()


def charged(amount: int) -> AuthidCharged:
    return AuthidCharged(authid=A, amount=amount, balance=0)


def packed(msg: AuthidCharged) -> bytes:
    return msgpack.packb(msg.fields(), use_bin_type=True)


@pytest.mark.parametrize("start", range(1, 3))
def test_outbox_rows_of_every_older_schema_migrate_as_version_1(tmp_path, start):
    """A v1 or v2 ledger holding queued messages and money: migrated to the newest
    schema, backed up first, its rows read as version 1 messages and published in order."""
    path = tmp_path / "ledger.sqlite"
    migrate(path, MIGRATIONS[:start])
    conn = sqlite3.connect(str(path))
    conn.execute("INSERT INTO authids (authid, service_id, state, created, modified, "
                 "credit, payments) VALUES (?, '1A', 'ACTIVE', 1, 1, 6000, 1)", (A,))
    for amount in (1, 2, 3):
        conn.execute("INSERT INTO outbox (topic, body) VALUES (?, ?)",
                     ("authid.charged", packed(charged(amount))))
    conn.commit()
    conn.close()
    ledger = Ledger.open(path)
    try:
        assert version_of(path) == LATEST
        assert ledger.conn.execute("SELECT version, stuck FROM outbox").fetchall() == \
            [(1, None)] * 3
        assert ledger.outbox_counts() == OutboxCounts(queued=3, stuck=0)
        assert ledger.take_outbox() == [charged(1), charged(2), charged(3)]
        assert (ledger.authid(A).credit, ledger.authid(A).payments) == (6000, 1)
    finally:
        ledger.close()
    backup = path.with_name(f"{path.name}.v{start}.bak")
    assert version_of(backup) == start
    conn = sqlite3.connect(str(backup))
    assert conn.execute("SELECT topic, body FROM outbox ORDER BY id").fetchall() == \
        [("authid.charged", packed(charged(n))) for n in (1, 2, 3)]
    conn.close()


UNDECODABLE = [
    # (topic, version, body, why it is kept)
    ("authid.charged", 99, packed(charged(0)), "version 99, this program knows "
                                               "authid.charged v1"),
    ("authid.recharged", 1, packed(charged(0)), "unknown topic 'authid.recharged'"),
    ("authid.charged", 1, b"\xc1 not msgpack", "body is not msgpack (FormatError)"),
    ("authid.charged", 1, msgpack.packb({"authid": A, "amount": 1}), "missing field balance"),
]


def test_undecodable_outbox_rows_are_kept_stuck_and_logged_once(tmp_path, caplog):
    """Good, bad, good: the good rows are published in order; each bad row stays in the
    outbox marked stuck with its reason, logged once, and not tried again by this program
    (no hot loop); the operator's counts say so."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    with ledger.transaction() as tx:
        tx.emit(charged(1))
    for topic, version, body, _ in UNDECODABLE:
        raw_outbox(path, topic, version, body)
    with ledger.transaction() as tx:
        tx.emit(charged(2))
    caplog.set_level(logging.ERROR, logger="lthn.ledger")
    assert ledger.take_outbox() == [charged(1), charged(2)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"outbox row {n} ({topic} v{version}): stuck, kept unpublished: {why}"
                     for n, (topic, version, _, why) in enumerate(UNDECODABLE, start=2)]
    assert ledger.outbox_counts() == OutboxCounts(queued=0, stuck=4)
    stuck = ledger.stuck_outbox()
    assert [(r.id, r.topic, r.version, r.error) for r in stuck] == [
        (n, topic, version, why) for n, (topic, version, _, why) in enumerate(UNDECODABLE, 2)]
    assert all(r.since > 0 for r in stuck)
    caplog.clear()
    with ledger.transaction() as tx:
        tx.emit(charged(3))
    assert ledger.take_outbox() == [charged(3)]
    assert ledger.take_outbox() == []
    assert caplog.records == []           # each stuck row was logged once, not per turn
    kept = ledger.conn.execute("SELECT topic, version, body FROM outbox ORDER BY id")
    assert kept.fetchall() == [(t, v, b) for t, v, b, _ in UNDECODABLE]   # never lost
    ledger.close()


def test_an_outbox_of_stuck_rows_costs_no_write_lock(tmp_path):
    """The loop asks on every turn: with only rows it already failed, the answer must come
    from a read, or every daemon would queue for the write lock once a second."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    raw_outbox(path, "authid.charged", 99, packed(charged(0)))
    assert ledger.take_outbox() == []                       # marks it stuck
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")                       # someone else is writing
    try:
        ledger.conn.execute("PRAGMA busy_timeout=50")
        assert ledger.take_outbox() == []                   # no "database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        ledger.close()


def test_a_program_with_a_newer_catalogue_publishes_what_an_older_one_kept(tmp_path):
    """During an upgrade a newer program queues `authid.charged` v2; an older one keeps it
    stuck. The upgraded program, whose catalogue differs, tries it again and publishes it;
    the older one never retries it."""

    @message("authid.charged", version=2)
    class AuthidChargedV2(Message):
        authid: str
        amount: int
        balance: int
        reason: str

    newer_catalogue = dict(CATALOGUE, **{"authid.charged": AuthidChargedV2})
    path = tmp_path / "ledger.sqlite"
    older = Ledger.open(path)
    newer = Ledger.open(path, catalogue=newer_catalogue)
    assert older.mark != newer.mark
    v2 = AuthidChargedV2(authid=A, amount=5, balance=1, reason="time")
    with newer.transaction() as tx:
        tx.emit(v2)
    assert older.take_outbox() == []
    assert older.outbox_counts() == OutboxCounts(queued=0, stuck=1)
    assert newer.take_outbox() == [v2]
    assert older.outbox_counts() == OutboxCounts(queued=0, stuck=0)
    older.close()
    newer.close()


def test_take_outbox_fills_its_batch_past_stuck_rows(tmp_path):
    """A batch of `limit` messages even when stuck rows sit among them, so the daemon's
    flush (which stops at a short batch) does not leave good rows for the next turn."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    for n in range(10):
        with ledger.transaction() as tx:
            tx.emit(charged(n))
        if n % 3 == 0:
            raw_outbox(path, "authid.charged", 99, packed(charged(0)))
    assert [m.amount for m in ledger.take_outbox(limit=5)] == [0, 1, 2, 3, 4]
    assert [m.amount for m in ledger.take_outbox(limit=5)] == [5, 6, 7, 8, 9]
    assert ledger.outbox_counts() == OutboxCounts(queued=1, stuck=3)   # the last one is
    assert ledger.take_outbox(limit=5) == []                           # found next turn
    assert ledger.outbox_counts() == OutboxCounts(queued=0, stuck=4)
    ledger.close()


def test_open_existing_reads_without_creating_or_migrating(tmp_path):
    path = tmp_path / "state" / "ledger.sqlite"
    with pytest.raises(LedgerMissing, match="no ledger there"):
        Ledger.open_existing(path)
    assert not path.exists() and not path.parent.exists()
    migrate(path, MIGRATIONS[:2])
    before = digest(path)
    with pytest.raises(LedgerError) as err:
        Ledger.open_existing(path)
    assert str(err.value) == (f"{path}: schema version 2 is older than this program reads "
                              f"({LATEST}); start the node once to migrate it")
    assert digest(path) == before and version_of(path) == 2
    migrate(path)
    reader = Ledger.open_existing(path)
    try:
        assert reader.outbox_counts() == OutboxCounts(queued=0, stuck=0)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.conn.execute("DELETE FROM outbox")
    finally:
        reader.close()


# --- money verbs: the arithmetic in the UPDATE, the fresh row returned (#13) ---

def test_money_verbs_do_the_arithmetic_and_return_the_fresh_row(tmp_path):
    clock = iter(float(t) for t in range(100, 200))
    ledger = Ledger.open(tmp_path / "ledger.sqlite", clock=lambda: next(clock))
    steps = [
        (lambda tx: tx.credit(A, 700, payment=True), dict(credit=700, payments=1)),
        (lambda tx: tx.credit(A, 5), dict(credit=705, payments=1)),
        (lambda tx: tx.add_pending(A, 300, payment=True), dict(pending=300, payments=2)),
        (lambda tx: tx.release_pending(A, 100), dict(pending=200, credit=805)),
        (lambda tx: tx.revoke(A, 200, from_pending=True), dict(pending=0, payments=1)),
        (lambda tx: tx.revoke(A, 5, from_pending=False), dict(credit=800, payments=0)),
        (lambda tx: tx.activate(A), dict(state="ACTIVE", activations=1)),
        (lambda tx: tx.start_spending(A, 50.5), dict(spending_since=50.5)),
        (lambda tx: tx.spend(A, 60, 6000), dict(spent=60, charged_ms=6000)),
        (lambda tx: tx.spend(A, 40, 4000), dict(spent=100, charged_ms=10_000)),
        (lambda tx: tx.deactivate(A), dict(state="DEPLETED", spending_since=None)),
        (lambda tx: tx.activate(A), dict(state="ACTIVE", activations=2)),
    ]
    with ledger.transaction() as tx:
        expected = dataclasses.asdict(tx.ensure_authid(A, "1A"))
    for verb, changes in steps:
        with ledger.transaction() as tx:
            row = verb(tx)
            expected.update(changes, modified=tx.now)
            if changes.get("state") == "ACTIVE":
                expected.update(activated_at=tx.now, spending_since=None)
            if "spent" in changes:
                expected.update(last_used=tx.now)
            assert dataclasses.asdict(row) == expected
            assert tx.authid(A) == row       # what the verb returned is what is stored
    assert ledger.authid(A).balance == 700
    ledger.close()


@pytest.mark.parametrize("verb, why", [
    (lambda tx: tx.credit("1A0000000000FFFF", 1), "authid 1A0000000000FFFF: not in the ledger"),
    (lambda tx: tx.activate(A), "authid 1A00112233445566: state ACTIVE, not changed "
                                "(state <> 'ACTIVE')"),
    (lambda tx: tx.start_spending(A, 1.0), "not changed (state = 'ACTIVE' AND "
                                           "spending_since IS NULL)"),
])
def test_a_verb_that_changes_nothing_raises_and_rolls_back(tmp_path, verb, why):
    """A state edge from the wrong state, or money for an unknown authid, is a bug: the
    whole transaction (here a credit before it) is undone, never half applied."""
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with ledger.transaction() as tx:
        tx.ensure_authid(A, "1A")
        tx.activate(A)
        tx.start_spending(A, 1.0)
    before = ledger.authid(A)
    with pytest.raises(NotApplied, match=re.escape(why)), ledger.transaction() as tx:
        tx.credit(A, 10)
        verb(tx)
    assert ledger.authid(A) == before
    ledger.close()


def test_deactivate_is_an_edge_from_active_only(tmp_path):
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with ledger.transaction() as tx:
        tx.ensure_authid(A, "1A")
    with pytest.raises(NotApplied, match="state PENDING, not changed"), \
            ledger.transaction() as tx:
        tx.deactivate(A)
    ledger.close()


def test_credits_from_many_connections_add_up(tmp_path):
    """Eight connections credit the same authid 50 times each: no update is lost."""
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path).transaction() as tx:
        tx.ensure_authid(A, "1A")

    def creditor() -> None:
        ledger = Ledger.open(path)
        try:
            for _ in range(50):
                with ledger.transaction() as tx:
                    tx.credit(A, 3, payment=True)
        finally:
            ledger.close()

    threads = [threading.Thread(target=creditor) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    row = Ledger.open(path).authid(A)
    assert (row.credit, row.payments) == (8 * 50 * 3, 8 * 50)


def test_change_counter_numbers_access_and_credit_changes(tmp_path):
    """Migration 4 (#16): every verb that changes an authid's state or credit gives the row
    the next change number, in commit order; charging time, starting to spend and pending
    credit do not (nobody reading the changes acts on those)."""
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    a, b = "1A00112233445566", "1A66554433221100"
    with ledger.transaction() as tx:
        tx.ensure_authid(a, "1A")
        tx.ensure_authid(b, "1A")
        tx.add_pending(b, 100, payment=True)
    assert ledger.change_seq() == 0 and ledger.authid_changes(0) == []
    with ledger.transaction() as tx:
        tx.credit(b, 500)
        tx.activate(a)
    changes = ledger.authid_changes(0)
    assert [(c.seq, c.authid, c.state) for c in changes] == [(1, b, "PENDING"), (2, a, "ACTIVE")]
    with ledger.transaction() as tx:
        tx.start_spending(a, tx.now)
        tx.spend(a, 10, 1000)
    assert ledger.change_seq() == 2
    with ledger.transaction() as tx:
        tx.revoke(b, 100, from_pending=True)          # pending only: no change
        tx.revoke(b, 200, from_pending=False)
        tx.deactivate(a)
    assert [(c.seq, c.authid, c.state) for c in ledger.authid_changes(2)] == [
        (3, b, "PENDING"), (4, a, "DEPLETED")]
    with ledger.transaction() as tx:
        assert [(n, row.authid) for n, row in tx.authids_changed(2)] == [(3, b), (4, a)]
        assert [n for n, _ in tx.authids_changed(0, limit=1)] == [3]
    ledger.close()


def test_waiting_spending_and_owing_lists(tmp_path):
    """The reads a sessiond tick makes instead of reading every active authid (#16)."""
    clock = iter(float(t) for t in range(100, 200))
    ledger = Ledger.open(tmp_path / "ledger.sqlite", clock=lambda: next(clock))
    a, b, c = "1A00112233445566", "1A66554433221100", "1B00000000000001"
    with ledger.transaction() as tx:       # now 100
        for authid in (a, b, c):
            tx.ensure_authid(authid, authid[:2])
            tx.credit(authid, 1000)
            tx.activate(authid)
        tx.start_spending(c, tx.now)
        sid = tx.open_session("proxy", c, "127.0.0.1", c)
    with ledger.transaction() as tx:       # now 101
        assert tx.authids_waiting_to_spend(100.5, 10) == [a, b]
        assert tx.authids_waiting_to_spend(99.0, 10) == []
        assert tx.authids_waiting_to_spend(100.5, 1) == [a]
        assert tx.authids_spending(None) == [c] and tx.authids_spending(["1B"]) == [c]
        assert tx.authids_spending(["1A"]) == [] and tx.authids_spending([]) == []
        tx.close_session(sid, "ended", 0, 0)
        assert tx.authids_owing_session_time(5.0) == {c}   # ended after its last charge
        tx.spend(c, 1, 1000)
        assert tx.authids_owing_session_time(0.0) == set()  # charged up to its end
    ledger.close()


def test_batch_reads_of_a_tick_agree_with_the_one_by_one_reads(tmp_path, monkeypatch):
    """authid_rows and sessions_of_many (#16: a tick reads the authids it looks at in two
    statements) return what authid and sessions_of return for each, across batches."""
    monkeypatch.setattr(ledger_mod, "BATCH", 7)     # several IN lists for 20 authids
    clock = iter(float(t) for t in range(100, 10_000))
    ledger = Ledger.open(tmp_path / "ledger.sqlite", clock=lambda: next(clock))
    authids = [f"1A{i:014X}" for i in range(20)]
    ended_after = {}
    for n, authid in enumerate(authids):
        with ledger.transaction() as tx:         # now 100 + n
            tx.ensure_authid(authid, "1A")
            tx.credit(authid, 100 * n)
            for k in range(n % 4):               # 0 to 3 sessions each, some closed
                sid = tx.open_session("proxy", authid, "127.0.0.1", f"{authid}/{k}")
                if n % 3:
                    tx.close_session(sid, "ended", 1, 2)
        # closed sessions of even authids ended before their time, odd ones after
        ended_after[authid] = tx.now + (0.5 if n % 2 == 0 else -0.5)
    missing = "1A00000000FFFFFF"
    with ledger.transaction() as tx:
        rows = tx.authid_rows([*authids, missing])
        assert rows == {authid: tx.authid(authid) for authid in authids}
        assert tx.authid_rows([]) == {}
        many = tx.sessions_of_many({**ended_after, missing: 0.0})
        one_by_one = {authid: tx.sessions_of(authid, after)
                      for authid, after in ended_after.items()}
        assert many == {authid: rows for authid, rows in one_by_one.items() if rows}
        assert any(r.ended is not None for rows in many.values() for r in rows)
        assert any(r.ended is None for rows in many.values() for r in rows)
        # an authid's own time leaves out what another's would keep
        assert sum(map(len, many.values())) < sum(map(len, tx.sessions_of_many(
            dict.fromkeys(authids, 0.0)).values()))
        assert tx.sessions_of_many({}) == {}
    ledger.close()


def test_add_spend_returns_the_period_totals(tmp_path):
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with ledger.transaction() as tx:
        tx.ensure_authid(A, "1A")
        assert tx.add_spend(A, 10, 1000, "connected", 0) == (10, 1000)
        assert tx.add_spend(A, 5, 500, "connected", 0) == (15, 1500)
        assert tx.add_spend(A, 7, 700, "connected", 1) == (7, 700)
        assert tx.spends_total(A) == 22
    ledger.close()


def test_a_tick_s_transaction_skips_the_disk_sync_and_survives_a_killed_process(tmp_path):
    """sessiond's tick commits with durable=False (synchronous=NORMAL in WAL mode): the
    rows are there for every other reader, and after a SIGKILL of the writer; every other
    transaction waits for the disk (FULL) again."""
    path = tmp_path / "ledger.sqlite3"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from lthn.ledger import Ledger\n"
        "led = Ledger.open(Path(sys.argv[1]))\n"
        "with led.transaction(durable=False) as tx:\n"
        "    assert tx.conn.execute('PRAGMA synchronous').fetchone()[0] == 1\n"
        "    tx.ensure_authid('1A00000000000042', '1A')\n"
        "    tx.credit('1A00000000000042', 1234)\n"
        "os.kill(os.getpid(), 9)\n")
    ran = subprocess.run([tool("python"), "-c", script, str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert ran.returncode == -9, ran.stderr
    led = Ledger.open(path)
    try:
        row = led.authid("1A00000000000042")
        assert row is not None and row.balance == 1234
        with led.transaction() as tx:
            assert tx.conn.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
        with led.transaction(durable=False) as tx:
            assert tx.conn.execute("PRAGMA synchronous").fetchone()[0] == 1   # NORMAL
        with led.transaction() as tx:
            assert tx.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        led.close()


def test_batched_spending_verbs_return_what_the_ledger_holds(tmp_path):
    """spend_many / start_spending_many work the rows out in Python (#16: no RETURNING
    per row): what they return must be what the ledger then holds, row for row."""
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    authids = [f"1A{i:014X}" for i in range(5)]
    with ledger.transaction() as tx:
        for authid in authids:
            tx.ensure_authid(authid, "1A")
            tx.credit(authid, 1000 * (1 + int(authid[-1])))
            tx.activate(authid)
        rows = tx.authid_rows(authids)
        started = tx.start_spending_many([(rows[a], 50.5 + i) for i, a in enumerate(authids[:3])])
        assert started == [tx.authid(a) for a in authids[:3]]
        after = tx.spend_many([(r, 7 * i, 100 * i) for i, r in
                               enumerate(started + [rows[authids[3]]])])
        assert after == [tx.authid(a) for a in authids[:4]]
        assert [(r.spent, r.charged_ms) for r in after] == [(0, 0), (7, 100), (14, 200),
                                                            (21, 300)]
        assert tx.authid(authids[4]) == rows[authids[4]]   # not given: untouched
        assert tx.spend_many([]) == [] and tx.start_spending_many([]) == []
    ledger.close()


@pytest.mark.parametrize("verb, error", [
    (lambda tx, r: tx.spend_many([(r, 1, 1), (dataclasses.replace(r, authid="1A99"), 1, 1)]),
     "1 of 2 authids not in the ledger"),
    (lambda tx, r: tx.start_spending_many([(r, 1.0)]), "not in the state"),
])
def test_batched_verbs_refuse_a_row_they_cannot_change_and_roll_back(tmp_path, verb, error):
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with ledger.transaction() as tx:
        tx.ensure_authid(A, "1A")
        tx.credit(A, 100)
        tx.activate(A)
        tx.start_spending(A, 1.0)
    before = ledger.authid(A)
    with pytest.raises(NotApplied, match=error):
        with ledger.transaction() as tx:
            verb(tx, tx.authid(A))
    assert ledger.authid(A) == before
    with ledger.transaction() as tx, pytest.raises(ValueError, match="twice"):
        tx.spend_many([(before, 1, 1), (before, 1, 1)])
    ledger.close()


def test_add_spends_totals_match_add_spend_one_by_one(tmp_path):
    one, many = (Ledger.open(tmp_path / f"{name}.sqlite") for name in ("one", "many"))
    spends = [(A, 10, 1000, "connected", 0), ("1B00000000000000", 3, 300, "wallclock", 4),
              (A, 7, 700, "connected", 1)]
    for ledger in (one, many):
        with ledger.transaction() as tx:
            tx.ensure_authid(A, "1A")
            tx.ensure_authid("1B00000000000000", "1B")
            tx.add_spend(A, 5, 500, "connected", 0)     # a row there already
    with one.transaction() as tx:
        expected = [tx.add_spend(a, amount, ms, why, period)
                    for a, amount, ms, why, period in spends]
    with many.transaction() as tx:
        assert tx.add_spends(spends) == expected == [(15, 1500), (3, 300), (7, 700)]
        assert tx.add_spends([]) == []
        with pytest.raises(ValueError, match="twice"):
            tx.add_spends([spends[0], spends[0]])
    for ledger in (one, many):
        with ledger.transaction() as tx:
            assert tx.spends_total(A) == 22
    one.close()
    many.close()
