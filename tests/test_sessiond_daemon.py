"""The Sessiond daemon's tick and cut paths, in-process with a hand-moved clock and an
admin socket that is missing or answers garbage (never a crash, issue #4)."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest
import zmq

from lthn import access
from lthn.bus import Envelope
from lthn.config import parse
from lthn.ledger import Ledger
from lthn.messages import AuthidDeactivated
from lthn.ports import free_port_pair
from services.sessiond import sessiond as sessiond_mod
from services.sessiond.session_book import Observed
from services.sessiond.sessiond import Sessiond

AUTHID = "1A00112233445566"
T0 = 1_700_000_000.0


class HandClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class GarbageAdmin:
    """A unix socket where haproxy's admin socket should be, answering nonsense."""

    def __init__(self, path: Path, answer: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.answer = answer
        self.asked = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                self.asked += 1
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon_factory(tmp_path: Path):
    made = []
    ctx = zmq.Context()

    def make(tracking: bool = True, billing: str = "wallclock", charge_interval: float = 60.0
             ) -> tuple[Sessiond, HandClock, HandClock]:
        config = parse({
            "provider": {"id": "ab" * 32}, "state_dir": str(tmp_path / "state"),
            "services": [{"id": "1A", "name": "p", "type": "proxy", "cost": "0.000006",
                          "firstPrePaidMinutes": 1, "billing": billing, "idleGrace": 1}],
            "proxy": {"log_port": free_port_pair()},
            "sessions": {"tracking": tracking, "max_wait_to_spend": 0, "tick": 1.0,
                         "charge_interval": charge_interval},
        }, "test.yaml")
        wall, mono = HandClock(T0), HandClock(100.0)
        ledger = Ledger.open(config.ledger_path, clock=wall)
        with ledger.transaction() as tx:
            tx.ensure_authid(AUTHID, "1A")
            access.reevaluate(tx, tx.credit(AUTHID, 6000), access.rules_for(
                config, config.services[0]), "test")
        daemon = Sessiond(config, ctx, ledger, clock=mono)
        made.append(daemon)
        return daemon, wall, mono
    yield make
    for daemon in made:
        daemon.publisher.close()
        if daemon.subscriber:
            daemon.subscriber.close()
        daemon.ledger.close()
    ctx.destroy(linger=0)


def test_no_admin_socket_logs_once_and_charges_on(daemon_factory, caplog):
    daemon, wall, mono = daemon_factory(charge_interval=1.0)   # every tick writes
    caplog.set_level(logging.INFO)
    for t in range(1, 6):
        wall.now, mono.now = T0 + t, 100.0 + t
        daemon.tick()
    lines = [r for r in caplog.records if "haproxy" in r.getMessage()]
    assert len(lines) == 1 and "admin socket" in lines[0].getMessage()
    # haproxy never answered (a node starting): not a warning (issue #15)
    assert lines[0].levelno == logging.INFO
    assert daemon.ledger.authid(AUTHID).charged_ms == 5000


@pytest.mark.parametrize("answer", [
    b"Unknown command, but maybe one of the following ones is a better match:\n",
    b"# table: authid_sessions, type: string, size:1048576, used:1\n0xz: bogus\n",
    b"\xff\xfe\x00garbage",
])
def test_garbage_answers_change_no_session_and_never_raise(daemon_factory, answer):
    daemon, wall, mono = daemon_factory(billing="connected")
    with daemon.ledger.transaction() as tx:   # a session sessiond had seen before
        tx.open_session("proxy", AUTHID, "127.0.0.1", AUTHID)
    daemon.book = sessiond_mod.SessionBook("proxy", daemon.ledger.open_sessions("proxy"))
    server = GarbageAdmin(daemon.config.haproxy_admin_socket, answer)
    try:
        for t in (1, 2, 3):
            wall.now, mono.now = T0 + t, 100.0 + t
            daemon.tick()
        assert server.asked >= 3
        assert len(daemon.ledger.open_sessions()) == 1     # unknown is not "ended"
        assert not any(daemon.cut({AUTHID: "test"}).values())   # cannot cut now, no raise
        wall.now = T0 + 3 + sessiond_mod.OUTAGE_CLOSE_AFTER + 1
        mono.now = 103.0 + sessiond_mod.OUTAGE_CLOSE_AFTER + 1
        daemon.tick()
    finally:
        server.close()
    assert daemon.ledger.open_sessions() == []
    reasons = [m.reason for m in daemon.ledger.take_outbox() if m.topic == "session.closed"]
    assert reasons == ["haproxy unavailable"]


def test_tracking_off_has_no_adapter_and_never_cuts(daemon_factory):
    daemon, wall, _ = daemon_factory(tracking=False)
    assert daemon.adapter is None
    daemon.on_message(Envelope(AuthidDeactivated(authid=AUTHID, reason="x"), "t.1", 1, T0))
    assert daemon.cut({AUTHID: "x"}) == {}
    wall.now = T0 + 2
    daemon.tick()
    assert daemon.ledger.authid(AUTHID).charged_ms == 2000   # wallclock from activation


class LiveAdapter:
    """Stands in for the proxy adapter: reports AUTHID live, records cuts."""
    kind = "proxy"

    def __init__(self) -> None:
        self.cuts: list[set[str]] = []
        self.changed = None      # it does not know what changed: the book looks at all

    def poll(self, known: set[str]) -> dict:
        return {AUTHID: Observed(AUTHID, AUTHID, "127.0.0.1", 0, 0)}

    def cut(self, authids: set[str]) -> dict[str, int]:
        self.cuts.append(set(authids))
        return dict.fromkeys(authids, 1)


def test_a_failed_tick_leaves_memory_as_the_ledger_has_it(daemon_factory, monkeypatch):
    daemon, wall, mono = daemon_factory(billing="connected")
    daemon.adapter = LiveAdapter()

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sessiond_mod.charging, "charge_tick", broken)
    wall.now = T0 + 1
    with pytest.raises(RuntimeError):
        daemon.tick()
    assert daemon.ledger.open_sessions() == [] and daemon.book.open == {}
    monkeypatch.undo()
    wall.now = T0 + 2
    daemon.tick()
    [row] = daemon.ledger.open_sessions()
    assert daemon.book.open[AUTHID].id == row.id


def test_exhaustion_cuts_and_records_the_cut(daemon_factory):
    daemon, wall, mono = daemon_factory(billing="connected")   # 6000 = 10 minutes
    daemon.adapter = LiveAdapter()
    wall.now = T0 + 1
    daemon.tick()
    wall.now = T0 + 601
    daemon.tick()
    assert daemon.adapter.cuts == [{AUTHID}]
    msgs = daemon.ledger.take_outbox()
    cut = [m for m in msgs if m.topic == "session.cut"]
    assert len(cut) == 1 and (cut[0].connections, cut[0].reason) == (1, "credit exhausted")
    assert daemon.ledger.authid(AUTHID).state == "DEPLETED"
    wall.now = T0 + 602
    daemon.tick()                     # still live, not active: cut again (a reconcile)
    assert daemon.adapter.cuts[-1] == {AUTHID}
    assert [m.reason for m in daemon.ledger.take_outbox() if m.topic == "session.cut"] == [
        "not active"]


def test_tracking_off_closes_rows_a_tracking_run_left_open(daemon_factory):
    daemon, _, _ = daemon_factory(tracking=False)
    with daemon.ledger.transaction() as tx:
        tx.open_session("proxy", AUTHID, "127.0.0.1", AUTHID)
    daemon.book = sessiond_mod.SessionBook("proxy", daemon.ledger.open_sessions("proxy"))
    daemon.start()
    assert daemon.ledger.open_sessions() == []
    closed = [m for m in daemon.ledger.take_outbox() if m.topic == "session.closed"]
    assert [m.reason for m in closed] == ["tracking off"]
