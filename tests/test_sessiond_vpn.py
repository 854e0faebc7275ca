"""sessiond with VPN sessions (issue #18), in-process with hand-moved clocks: the snapshot
lthn-vpnd writes (written here by the same services/vpn/clients.py code) becomes session
rows of kind vpn that are charged like proxy ones; exhaustion asks lthn-vpnd to cut with
`session.kill`; a stale or missing snapshot changes nothing until the outage is long."""

from __future__ import annotations

import pytest
import zmq

from lthn import access
from lthn.config import parse
from lthn.control import Asked, Refused
from lthn.ledger import Ledger
from lthn.messages import SessionKill
from lthn.ports import free_port_pair
from lthn.requests import KillSession
from lthn.vpn.contract import write_snapshot
from services.sessiond import sessiond as sessiond_mod
from services.sessiond import vpn_sessions
from services.sessiond.sessiond import Sessiond
from services.vpn.clients import ClientTable

AUTHID = "2B00112233445566"
T0 = 1_700_000_000.0
OPENVPN_PID = 4242


class HandClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp_path, ctx: zmq.Context, tracking: bool = True) -> None:
        self.config = parse({
            "provider": {"id": "ab" * 32}, "state_dir": str(tmp_path / "state"),
            # 0.000006/min at 10^8 units per coin = 600 per minute = 10 per second
            "services": [{"id": "2B", "name": "v", "type": "vpn", "cost": "0.000006",
                          "firstPrePaidMinutes": 1, "billing": "connected",
                          "idleGrace": 0}],
            "proxy": {"log_port": free_port_pair()},
            "vpn": {"enabled": True},
            # charge_interval 1 s: every tick writes its charge, which these tests read (#16)
            "sessions": {"tracking": tracking, "max_wait_to_spend": 3600, "tick": 1.0,
                         "charge_interval": 1.0},
        }, "test.yaml")
        self.wall, self.mono = HandClock(T0), HandClock(100.0)
        ledger = Ledger.open(self.config.ledger_path, clock=self.wall)
        with ledger.transaction() as tx:
            tx.ensure_authid(AUTHID, "2B")
            tx.credit(AUTHID, 1200)          # two minutes
            access.reevaluate(tx, tx.authid(AUTHID), access.rules_for(
                self.config, self.config.services[0]), "test")
        self.daemon = Sessiond(self.config, ctx, ledger, clock=self.mono)
        self.published: list = []
        if self.daemon.vpn is not None:
            self.daemon.vpn.publish = self.published.append
        self.daemon.adapter = None          # no haproxy here: the proxy side is not looked at
        self.table = ClientTable()
        self.attached: bool | None = None

    def snapshot(self, attached: bool = True) -> None:
        """What lthn-vpnd writes, as written at the next tick's time."""
        self.attached = attached

    def tick(self, at: float) -> None:
        self.wall.now, self.mono.now = T0 + at, 100.0 + at
        if self.attached is not None:
            write_snapshot(self.config.vpn_clients_path, self.table.snapshot(
                self.wall.now, 1, OPENVPN_PID if self.attached else 0))
            self.attached = None
        self.daemon.tick()

    def outbox(self, topic: str) -> list:
        return [m for m in self.daemon.ledger.take_outbox() if m.topic == topic]

    def close(self) -> None:
        self.daemon.publisher.close()
        if self.daemon.subscriber:
            self.daemon.subscriber.close()
        self.daemon.ledger.close()


@pytest.fixture
def rig(tmp_path):
    ctx = zmq.Context()
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(tmp_path / str(len(made)), ctx, **kw))
        return made[-1]
    yield make
    for r in made:
        r.close()
    ctx.destroy(linger=0)


def test_a_client_is_a_charged_session_with_its_bytes(rig):
    r = rig()
    r.table.established(3, AUTHID, "10.99.0.2:41000", T0)
    r.snapshot()
    r.tick(1)
    [row] = r.daemon.ledger.open_sessions("vpn")
    assert (row.authid, row.source, row.adapter_ref) == (AUTHID, "10.99.0.2:41000",
                                                         f"{OPENVPN_PID}:3:{int(T0)}")
    r.table.bytes(3, 5000, 70000)
    r.snapshot()
    r.tick(11)
    assert r.daemon.ledger.authid(AUTHID).spent == 100      # 10 s at 10 per second
    r.table.bytes(3, 5100, 90000)
    r.table.ended(3, T0 + 12)
    r.snapshot()
    r.tick(12)
    assert r.daemon.ledger.open_sessions("vpn") == []
    [closed] = r.outbox("session.closed")
    assert (closed.kind, closed.reason, closed.bytes_in, closed.bytes_out) == (
        "vpn", "ended", 5100, 90000)
    r.snapshot()
    r.tick(30)                                                # no session: not charged
    assert r.daemon.ledger.authid(AUTHID).spent == 110


def test_exhaustion_asks_vpnd_to_cut_once_and_the_row_closes_as_cut(rig):
    r = rig()
    r.table.established(3, AUTHID, "10.99.0.2:41000", T0)
    r.snapshot()
    r.tick(1)
    r.snapshot()
    r.tick(121)                                               # 1200 units are gone
    assert r.daemon.ledger.authid(AUTHID).state == "DEPLETED"
    assert r.published == [SessionKill(authid=AUTHID, kind="vpn", reason="credit exhausted",
                                       ref="")]
    r.snapshot()                                              # vpnd has not cut it yet
    r.tick(122)
    assert len(r.published) == 1                              # not asked again so soon
    r.snapshot()
    r.tick(121 + vpn_sessions.ASK_AGAIN_SECONDS + 1)
    assert r.published[-1] == SessionKill(authid=AUTHID, kind="vpn", reason="not active",
                                           ref="")
    r.table.killed(3, "credit exhausted")                     # vpnd's client-kill succeeded
    r.snapshot()
    r.tick(125)
    closed = r.outbox("session.closed")
    assert [(m.kind, m.reason) for m in closed] == [("vpn", "cut, credit exhausted")]


def test_a_stale_or_detached_snapshot_keeps_rows_until_the_outage_is_long(rig, caplog):
    r = rig()
    r.table.established(3, AUTHID, "10.99.0.2:41000", T0)
    r.snapshot()
    r.tick(1)
    r.tick(1 + vpn_sessions.STALE_SECONDS + 1)                # vpnd stopped writing
    assert len(r.daemon.ledger.open_sessions("vpn")) == 1
    assert "lthn-vpnd last reported" in caplog.text
    r.snapshot(attached=False)                                # vpnd lost OpenVPN
    r.tick(8)
    assert len(r.daemon.ledger.open_sessions("vpn")) == 1
    r.snapshot(attached=False)
    r.tick(8 + sessiond_mod.OUTAGE_CLOSE_AFTER + 1)
    assert r.daemon.ledger.open_sessions("vpn") == []
    assert [m.reason for m in r.outbox("session.closed")] == ["vpn unavailable"]


def test_tracking_off_leaves_vpn_clients_alone(rig):
    r = rig(tracking=False)
    assert r.daemon.vpn is None
    r.table.established(3, AUTHID, "10.99.0.2:41000", T0)
    r.snapshot()
    r.tick(200)                                               # wallclock: credit is gone
    assert r.daemon.ledger.authid(AUTHID).state == "DEPLETED"
    assert r.daemon.ledger.open_sessions("vpn") == [] and r.published == []


def test_an_operator_kills_one_vpn_session(rig):
    """`lthnctl session kill` of a VPN session: sessiond asks lthn-vpnd to cut that one
    client (by its ref), its row closes as killed; the authid's other client stays."""
    r = rig()
    r.table.established(3, AUTHID, "10.99.0.2:41000", T0)
    r.table.established(4, AUTHID, "10.99.0.3:41000", T0)
    r.snapshot()
    r.tick(1)
    first, second = sorted(r.daemon.ledger.open_sessions("vpn"), key=lambda row: row.id)
    killed = r.daemon.on_kill(KillSession(session_id=first.id, reason="abuse"),
                              Asked(sender="t", user="alice"))
    assert (killed.session_id, killed.kind, killed.connections) == (first.id, "vpn", 1)
    assert r.published == [SessionKill(authid=AUTHID, kind="vpn",
                                       reason="killed by lthnctl:alice: abuse",
                                       ref=first.adapter_ref)]
    r.table.killed(3, "killed")                               # vpnd did it
    r.snapshot()
    r.tick(2)
    assert [row.id for row in r.daemon.ledger.open_sessions("vpn")] == [second.id]
    assert [m.reason for m in r.outbox("session.closed")] == [
        "cut, killed by lthnctl:alice: abuse"]
    r.table.ended(4, T0 + 3)
    r.snapshot()
    r.tick(3)
    with pytest.raises(Refused):                              # not live any more
        r.daemon.on_kill(KillSession(session_id=second.id, reason="x"),
                         Asked(sender="t", user="alice"))
