"""The ledger file: migrations (from every older version), refusal of a newer schema,
exactly-once payments and a claim-once outbox, with several connections at once."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from lthn.ledger import MIGRATIONS, Ledger, LedgerError, backup_exists, migrate, schema_version
from lthn.messages import AuthidCharged
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
