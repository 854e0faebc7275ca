"""The ledger's money verbs and versioned outbox against the code they replaced (#13).

Three figures, each with a baseline measured in the same run on the same kind of file:

1. crediting: `tx.credit(...)` (one UPDATE ... RETURNING) against the read-modify-write it
   replaced (SELECT the row, UPDATE with Python's sum, SELECT the fresh row).
2. publishing: `Ledger.take_outbox` (read, decode, then delete what decoded) against the
   old claim (DELETE ... RETURNING, then decode), both taking the same N queued messages.
3. the loop's idle turn with stuck rows: `take_outbox` on an outbox holding only rows this
   program already failed, against an empty outbox (both must stay a plain read).

    python bench/bench_ledger.py [--credits 5000] [--messages 20000] [--stuck 10000]

Each batch runs inside one transaction, so fsync does not drown the SQL being compared.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import msgpack
from benchlib import percentile

from lthn.ledger import _AUTHID_COLS, AuthidRow, Ledger
from lthn.messages import CATALOGUE, AuthidCharged, build

AUTHID = "1A00112233445566"


def fresh_ledger(directory: Path, name: str) -> Ledger:
    return Ledger.open(directory / f"{name}.sqlite")


def credit_verbs(ledger: Ledger, n: int) -> float:
    with ledger.transaction() as tx:
        tx.ensure_authid(AUTHID, "1A")
        t0 = time.perf_counter()
        for _ in range(n):
            tx.credit(AUTHID, 1, payment=True)
        return time.perf_counter() - t0


def credit_read_modify_write(ledger: Ledger, n: int) -> float:
    conn = ledger.conn
    with ledger.transaction() as tx:
        tx.ensure_authid(AUTHID, "1A")
        t0 = time.perf_counter()
        for _ in range(n):
            row = AuthidRow(*conn.execute(f"SELECT {_AUTHID_COLS} FROM authids WHERE "
                                          "authid = ?", (AUTHID,)).fetchone())
            conn.execute("UPDATE authids SET credit = ?, payments = ?, modified = ? "
                         "WHERE authid = ?", (row.credit + 1, row.payments + 1, tx.now, AUTHID))
            fresh = conn.execute(f"SELECT {_AUTHID_COLS} FROM authids WHERE authid = ?",
                                 (AUTHID,)).fetchone()
            assert fresh is not None
        return time.perf_counter() - t0


def queue(ledger: Ledger, n: int) -> None:
    with ledger.transaction() as tx:
        for i in range(n):
            tx.emit(AuthidCharged(authid=AUTHID, amount=i, balance=0))


def take_versioned(ledger: Ledger) -> tuple[float, int]:
    t0, taken = time.perf_counter(), 0
    while batch := ledger.take_outbox():
        taken += len(batch)
    return time.perf_counter() - t0, taken


def take_delete_first(ledger: Ledger) -> tuple[float, int]:
    """The claim before #13: delete the batch, then decode what was deleted."""
    t0, taken = time.perf_counter(), 0
    while True:
        with ledger.transaction():
            rows = ledger.conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id "
                "LIMIT 1000) RETURNING id, topic, body").fetchall()
        for _id, topic, body in sorted(rows):
            build(CATALOGUE[topic], msgpack.unpackb(body, raw=False))
        taken += len(rows)
        if not rows:
            return time.perf_counter() - t0, taken


def idle_turns(ledger: Ledger, turns: int) -> list[float]:
    took = []
    for _ in range(turns):
        t0 = time.perf_counter()
        if ledger.take_outbox():
            raise SystemExit("bench: an idle outbox returned messages")
        took.append(time.perf_counter() - t0)
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--credits", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--stuck", type=int, default=10000)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        new, old = fresh_ledger(directory, "verbs"), fresh_ledger(directory, "rmw")
        t_old = credit_read_modify_write(old, args.credits)
        t_new = credit_verbs(new, args.credits)
        assert new.authid(AUTHID) is not None and new.authid(AUTHID).credit == args.credits
        print(f"credit x{args.credits}: verb {t_new / args.credits * 1e6:.1f} us each, "
              f"read-modify-write (baseline) {t_old / args.credits * 1e6:.1f} us each, "
              f"ratio {t_new / t_old:.2f}")
        new.close()
        old.close()

        new, old = fresh_ledger(directory, "take-new"), fresh_ledger(directory, "take-old")
        queue(new, args.messages)
        queue(old, args.messages)
        t_old, n_old = take_delete_first(old)
        t_new, n_new = take_versioned(new)
        assert n_old == n_new == args.messages, (n_old, n_new)
        print(f"take_outbox x{args.messages}: decode-then-delete "
              f"{t_new / args.messages * 1e6:.1f} us/message, delete-then-decode (baseline) "
              f"{t_old / args.messages * 1e6:.1f} us/message, ratio {t_new / t_old:.2f}")
        new.close()
        old.close()

        empty, stuck = fresh_ledger(directory, "empty"), fresh_ledger(directory, "stuck")
        conn = sqlite3.connect(str(directory / "stuck.sqlite"))
        conn.executemany("INSERT INTO outbox (topic, version, body) VALUES (?, 99, x'80')",
                         [("authid.charged",)] * args.stuck)
        conn.commit()
        conn.close()
        # marks them stuck, once; the bench made them, so their log lines are not shown
        logging.getLogger("lthn.ledger").setLevel(logging.CRITICAL)
        stuck.take_outbox()
        base = idle_turns(empty, 2000)
        turns = idle_turns(stuck, 2000)
        print(f"idle turn, outbox of {args.stuck} stuck rows: p50 "
              f"{percentile(turns, 50) * 1e6:.1f} us, p99 {percentile(turns, 99) * 1e6:.1f} us;"
              f" empty outbox (baseline) p50 {percentile(base, 50) * 1e6:.1f} us, p99 "
              f"{percentile(base, 99) * 1e6:.1f} us; ratio p50 "
              f"{percentile(turns, 50) / percentile(base, 50):.2f}")
        empty.close()
        stuck.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
