"""Outbox rows a program cannot decode, through a real daemon loop and lthnctl (#13).

A row of an unknown version or topic, or with a broken body, used to be deleted before it
was decoded and then crash the publishing daemon. Now the daemon keeps it (stuck, logged
once), goes on publishing the good rows queued after it, and `lthnctl outbox` counts it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import yaml
import zmq

from lthn import config as config_mod
from lthn.bus import Subscriber
from lthn.config import Config
from lthn.ledger import Ledger
from lthn.messages import AuthidCharged
from lthn.node.supervision import tool
from tests.fixtures.common import wait_for

AUTHID = "1A00112233445566"
KEPT = [
    # (topic, version, body, the reason logged and shown)
    ("authid.charged", 99, {"authid": AUTHID, "amount": 7, "balance": 0},
     "version 99, this program knows authid.charged v1"),
    ("authid.recharged", 1, {"authid": AUTHID, "amount": 7, "balance": 0},
     "unknown topic 'authid.recharged'"),
    ("authid.charged", 1, None, "body is not msgpack (FormatError)"),
]


def charged(amount: int) -> AuthidCharged:
    return AuthidCharged(authid=AUTHID, amount=amount, balance=0)


def queue(path: Path, rows: list[tuple[str, int, bytes]]) -> list[int]:
    """Queue rows in one transaction, as programs of several versions sharing the ledger
    would have; returns their ids."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        ids = [conn.execute("INSERT INTO outbox (topic, version, body) VALUES (?, ?, ?)",
                            row).lastrowid for row in rows]
        conn.execute("COMMIT")
        return ids
    finally:
        conn.close()


def good(amount: int) -> tuple[str, int, bytes]:
    msg = charged(amount)
    return msg.topic, msg.version, msgpack.packb(msg.fields(), use_bin_type=True)


def kept_rows() -> list[tuple[str, int, bytes]]:
    return [(topic, version, b"\xc1 not msgpack" if body is None else msgpack.packb(body))
            for topic, version, body, _ in KEPT]


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({
        "provider": {"id": "ef" * 32},
        "state_dir": str(tmp_path / "state"),
        # port 9 on loopback: nobody listens; paymentd's polls fail fast and back off
        "wallet": {"url": "http://127.0.0.1:9/json_rpc", "dialect": "monero",
                   "poll_interval": 5},
    }))
    return path


class Daemon:
    """One real program, its output in a file."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([tool(name), "-c", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, line: str, count: int = 1, timeout: float = 15.0) -> None:
        wait_for(lambda: self.text().count(line) >= count, timeout=timeout,
                 what=f"{line!r} x{count} in {self.log.name}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, Config, list[Daemon]]]:
    """busd and a config; the test starts the daemons it wants into the list."""
    path = write_config(tmp_path)
    config = config_mod.load(path)
    busd = Daemon("lthn-busd", path, tmp_path / "busd.log")
    started = [busd]
    try:
        busd.wait_log("bus: forwarding")
        yield path, config, started
    finally:
        for daemon in reversed(started):
            daemon.stop()


def receive(sub: Subscriber, count: int, timeout: float = 15.0) -> list[int]:
    got: list[int] = []

    def more() -> bool:
        env = sub.receive(timeout_ms=100)
        if env is not None:
            got.append(env.message.amount)
        return len(got) >= count
    wait_for(more, timeout=timeout, interval=0, what=f"{count} authid.charged messages")
    return got


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("lthnctl"), "-c", str(config), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_issue_13_daemon_keeps_undecodable_rows_and_publishes_the_later_ones(node, tmp_path):
    """paymentd's loop meets rows of an unknown version, an unknown topic and a broken
    body between good ones: it logs each once, keeps them, publishes 1 and 2, then 3
    queued later; after a restart it does not log them again; lthnctl shows them."""
    path, config, started = node
    paymentd = Daemon("lthn-paymentd", path, tmp_path / "paymentd.log")
    started.append(paymentd)
    paymentd.wait_log("paymentd: ready")
    ctx = zmq.Context()
    sub = Subscriber(ctx, config.subscribe_endpoint, ["authid."])
    try:
        ids = queue(config.ledger_path, [good(1), *kept_rows(), good(2)])
        assert receive(sub, 2) == [1, 2]
        kept_ids = ids[1:-1]
        stuck_lines = [f"outbox row {row_id} ({topic} v{version}): stuck, kept unpublished: "
                       f"{why}" for row_id, (topic, version, _, why)
                       in zip(kept_ids, KEPT, strict=True)]
        for line in stuck_lines:
            paymentd.wait_log(line)
        queue(config.ledger_path, [good(3)])
        assert receive(sub, 1) == [3]
        assert paymentd.proc.poll() is None, "paymentd died"
        assert paymentd.stop() == 0
        paymentd = Daemon("lthn-paymentd", path, tmp_path / "paymentd.log")
        started.append(paymentd)
        paymentd.wait_log("paymentd: ready", count=2)
        queue(config.ledger_path, [good(4)])
        assert receive(sub, 1) == [4]       # a turn of the restarted loop went by
    finally:
        sub.close()
        ctx.destroy(linger=0)
    text = paymentd.text()
    assert [text.count(line) for line in stuck_lines] == [1, 1, 1]   # once, not per turn
    assert "Traceback" not in text

    shown = ctl(path, "outbox", "--json")
    assert (shown.returncode, shown.stderr) == (0, "")
    report = json.loads(shown.stdout)
    assert (report["queued"], report["stuck"]) == (0, 3)
    assert [(r["id"], r["topic"], r["version"], r["error"]) for r in report["stuck_rows"]] \
        == [(row_id, topic, version, why)
            for row_id, (topic, version, _, why) in zip(kept_ids, KEPT, strict=True)]
    table = ctl(path, "outbox")
    assert table.returncode == 0
    assert table.stdout.splitlines()[:2] == ["queued  0", "stuck   3"]
    assert f"{kept_ids[0]:>8}  authid.charged" in table.stdout
    assert "version 99, this program knows authid.charged v1" in table.stdout
    ledger = Ledger.open(config.ledger_path)
    try:
        kept = ledger.conn.execute("SELECT topic, version, body FROM outbox ORDER BY id")
        assert kept.fetchall() == kept_rows()                         # never deleted unread
    finally:
        ledger.close()


def test_lthnctl_outbox_without_a_ledger_says_so_and_creates_nothing(tmp_path):
    path = write_config(tmp_path)
    ledger = tmp_path / "state" / "ledger.sqlite"
    for args in (("outbox",), ("outbox", "--json")):
        result = ctl(path, *args)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr == (f"Error: {ledger}: no ledger there (the node creates it "
                                 "when it first starts; is this the node's config?)\n")
    assert not ledger.exists() and not ledger.parent.exists()


def test_lthnctl_outbox_counts_queued_rows_and_lists_at_most_limit(tmp_path):
    path = write_config(tmp_path)
    config = config_mod.load(path)
    Ledger.open(config.ledger_path).close()
    queue(config.ledger_path, [good(1), good(2)])
    ledger = Ledger.open(config.ledger_path)
    try:
        ledger.conn.execute("UPDATE outbox SET stuck = 'test', stuck_by = 'x', stuck_at = 0 "
                            "WHERE id = 1")
    finally:
        ledger.close()
    result = ctl(path, "outbox", "--limit", "0")
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["queued  1", "stuck   1"]
    result = ctl(path, "outbox", "--limit", "-1")
    assert (result.returncode, result.stderr) == (
        2, "Error: --limit: must be 0 or more (got -1)\n")


def test_lthnctl_outbox_with_a_config_mistake_says_what_and_where(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(f'provider: {{id: "{"ef" * 32}"}}\nstate_dri: "{tmp_path}"\n')
    result = ctl(path, "outbox")
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {path}: state_dri: unknown key")
    assert len(result.stderr.splitlines()) == 1
