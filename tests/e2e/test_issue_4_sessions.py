"""Issue #4, sessiond: charging live proxy sessions and cutting them when credit is gone.

Real parts: haproxy 2.6 (tests/fixtures/mini_proxy.py: the design's stick tables and
refusal-log contract on a plain-HTTP front end), a loopback CONNECT origin, lthn-busd and
lthn-sessiond processes on a config in tmp_path. Credit is put into the real ledger with
lthn.access (the wallet path is paymentd's test); authd's part (the runtime map) is done by
the test with `add map` / `del map`.

The last test is the whole product path: the node of tests/fixtures/proxy.py (busd,
paymentd, authd, haproxy, squid under supervisord, TLS front end), a real regtest payment,
and lthn-sessiond started beside it on the node's config.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
import zmq

from lthn import access
from lthn import config as config_mod
from lthn.bus import Envelope, Publisher, Subscriber
from lthn.ledger import Ledger
from lthn.messages import AuthidDeactivated
from lthn.ports import free_port_pair
from services.sessiond import charging
from tests.fixtures.common import wait_for
from tests.fixtures.mini_proxy import (
    ConnectOrigin,
    EchoServer,
    MiniHaproxy,
    closed_by_peer,
    open_tunnel,
    request_status,
)

BUSD = "import sys; from services.busd.main import main; sys.exit(main(sys.argv[1:]))"
AUTHID = "1A00112233445566"
# 0.0006 coin/min = 60000 atomic units per minute = 1000 per second
COST = "0.0006"
PER_SECOND = 1000


class Rig:
    """busd, haproxy, origin and (on demand) sessiond on one config; a bus tap."""

    def __init__(self, tmp_path: Path, sessions: dict, billing: str = "connected") -> None:
        self.dir = tmp_path
        self.state = tmp_path / "state"
        self.state.mkdir(parents=True, mode=0o700)
        self.config_path = tmp_path / "node.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "provider": {"id": "ab" * 32},
            "state_dir": str(self.state),
            "log_level": "debug",
            "services": [{"id": "1A", "name": "proxy", "type": "proxy", "cost": COST,
                          "firstPrePaidMinutes": 0, "subsequentPrePaidMinutes": 0,
                          "billing": billing, "idleGrace": 0.5}],
            "proxy": {"bind": "127.0.0.1", "log_port": free_port_pair()},
            "sessions": sessions,
        }))
        self.config = config_mod.load(self.config_path)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ctx = zmq.Context()
        self.busd = self._spawn("busd", [sys.executable, "-c", BUSD, "-c",
                                         str(self.config_path)])
        self.subscriber = Subscriber(self.ctx, self.config.subscribe_endpoint,
                                     ["authid.", "session."])
        self.seen: list[Envelope] = []
        self.origin = ConnectOrigin()
        self.haproxy = MiniHaproxy(self.config, self.origin.port).start()
        self.ledger = Ledger.open(self.config.ledger_path)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.dir / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_sessiond(self) -> subprocess.Popen:
        before = self.log("sessiond").count("sessiond: ready")
        proc = self._spawn("sessiond", [sys.executable, "-m", "services.sessiond.main",
                                        "-c", str(self.config_path)])
        wait_for(lambda: self.log("sessiond").count("sessiond: ready") > before, timeout=10,
                 what="sessiond ready")
        return proc

    def credit(self, authid: str, amount: int) -> None:
        """Credit straight into the ledger and admit it, as paymentd and authd would."""
        service = self.config.service(authid[:2])
        with self.ledger.transaction() as tx:
            tx.ensure_authid(authid, authid[:2])
            row = access.reevaluate(tx, tx.credit(authid, amount), access.rules_for(
                self.config, service), "test")
        assert row.state == "ACTIVE"
        self.haproxy.add(authid, authid[:2])

    def wait_message(self, topic: str, timeout: float = 10.0, **fields: object) -> Envelope:
        def found() -> Envelope | None:
            self.seen.extend(self.subscriber.drain())
            for env in self.seen:
                if env.topic == topic and all(getattr(env.message, k) == v
                                              for k, v in fields.items()):
                    return env
            return None
        return wait_for(found, timeout=timeout, what=f"{topic} {fields}")

    def audit_time(self, authid: str, event: str) -> float:
        row = self.ledger.conn.execute(
            "SELECT at FROM audit WHERE authid = ? AND event = ? ORDER BY id DESC",
            (authid, event)).fetchone()
        assert row, f"no {event} audit line for {authid}"
        return row[0]

    def close(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        self.haproxy.stop()
        self.origin.close()
        self.subscriber.close()
        self.ledger.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator:
    rigs: list[Rig] = []

    def make(sessions: dict | None = None, billing: str = "connected") -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", {"tick": 0.25, **(sessions or {})}, billing)
        rigs.append(rig)
        return rig
    yield make
    for rig in rigs:
        rig.close()


def test_issue_4_credit_exhausted_cuts_the_open_connect_tunnel(rig_factory):
    """A tiny credit runs out while a CONNECT tunnel is open: sessiond deactivates the
    authid and the node closes the tunnel within 2 s; refused once authd drops it."""
    rig = rig_factory()
    rig.start_sessiond()
    rig.credit(AUTHID, 3 * PER_SECOND)
    tunnel = open_tunnel(rig.haproxy.port, AUTHID)
    opened = rig.wait_message("session.opened", authid=AUTHID)
    assert opened.message.kind == "proxy" and opened.message.source == "127.0.0.1"
    rig.wait_message("authid.deactivated", timeout=10, authid=AUTHID)
    assert closed_by_peer(tunnel, timeout=5.0), "the tunnel is still open"
    closed_at = time.time()
    assert closed_at - rig.audit_time(AUTHID, "deactivated") < 2.0
    cut = rig.wait_message("session.cut", authid=AUTHID)
    assert cut.message.connections == 1 and cut.message.reason == "credit exhausted"
    ended = rig.wait_message("session.closed", authid=AUTHID)
    assert ended.message.reason == "cut, credit exhausted"
    assert ended.message.bytes_in >= 4 and ended.message.bytes_out >= 4   # the ping
    row = rig.ledger.authid(AUTHID)
    assert row.state == "DEPLETED" and row.spent <= row.credit
    assert row.balance * 60 < rig.config.atomic(rig.config.services[0].cost)
    rig.haproxy.remove(AUTHID)                 # authd's part, on authid.deactivated
    assert request_status(rig.haproxy.port, AUTHID) == 403
    tunnel.close()


def test_issue_4_deactivation_seen_on_the_bus_cuts_within_2s(rig_factory):
    """Another daemon deactivates (a revoked payment): sessiond, told only by the bus
    (its own tick is 30 s away), cuts both tunnels of that authid and no other."""
    rig = rig_factory({"tick": 30.0})
    rig.start_sessiond()
    other = "1A99887766554433"
    rig.credit(AUTHID, 600 * PER_SECOND)
    rig.credit(other, 600 * PER_SECOND)
    tunnels = [open_tunnel(rig.haproxy.port, AUTHID) for _ in range(2)]
    bystander = open_tunnel(rig.haproxy.port, other)
    with rig.ledger.transaction() as tx:
        tx.deactivate(AUTHID)   # ACTIVE -> DEPLETED; the message is sent below
    publisher = Publisher(rig.ctx, rig.config.publish_endpoint, "paymentd.test")
    try:
        sent = time.time()
        wait_for(lambda: publisher.publish(AuthidDeactivated(
            authid=AUTHID, reason="payment revoked")) or all(
                closed_by_peer(t, timeout=0.05) for t in tunnels),
            timeout=2.0, interval=0.0, what="both tunnels closed")
        assert time.time() - sent < 2.0
    finally:
        publisher.close()
    cut = rig.wait_message("session.cut", authid=AUTHID)
    assert cut.message.reason == "payment revoked" and cut.message.connections == 2
    bystander.sendall(b"still")
    assert bystander.recv(5) == b"still"
    for sock in (*tunnels, bystander):
        sock.close()


def test_issue_4_tracking_off_spends_but_never_cuts(rig_factory):
    """sessions.tracking false: credit is spent on time from activation; the tunnel stays."""
    rig = rig_factory({"tracking": False})
    rig.start_sessiond()
    rig.credit(AUTHID, 2 * PER_SECOND)
    tunnel = open_tunnel(rig.haproxy.port, AUTHID)
    rig.wait_message("authid.deactivated", timeout=10, authid=AUTHID)
    row = rig.ledger.authid(AUTHID)
    assert row.state == "DEPLETED" and row.spent > 0
    assert row.spending_since is None   # cleared by the deactivation
    assert not closed_by_peer(tunnel, timeout=1.0)
    tunnel.sendall(b"alive")
    assert tunnel.recv(5) == b"alive"
    assert "session.cut" not in [e.topic for e in rig.seen + rig.subscriber.drain()]
    tunnel.close()


def test_issue_4_sigkill_restart_neither_double_charges_nor_loses_time(rig_factory):
    """Wallclock billing, sessiond killed with SIGKILL and started again: the charged time
    is exactly last charge - spending start, and charging goes on (written every tick:
    charge_interval 0.25 s)."""
    rig = rig_factory({"charge_interval": 0.25}, billing="wallclock")
    rig.credit(AUTHID, 600 * PER_SECOND)
    tunnel = open_tunnel(rig.haproxy.port, AUTHID)
    proc = rig.start_sessiond()
    wait_for(lambda: (rig.ledger.authid(AUTHID).charged_ms or 0) >= 1000, timeout=10,
             what="a second charged")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed = rig.ledger.authid(AUTHID)
    rig.start_sessiond()
    wait_for(lambda: rig.ledger.authid(AUTHID).charged_ms >= killed.charged_ms + 1000,
             timeout=10, what="charging after the restart")
    row = rig.ledger.authid(AUTHID)
    assert row.charged_ms == charging.to_ms(row.last_used) - charging.to_ms(row.spending_since)
    with rig.ledger.transaction() as tx:
        assert tx.spends_total(AUTHID) == row.spent
    assert row.spent == 60_000 * row.charged_ms // 60_000
    assert time.time() - row.last_used < 1.0
    tunnel.close()


def test_issue_4_tunnel_opened_before_a_sigkill_restart_is_still_cut(rig_factory):
    """sessiond killed while a tunnel is open and started again; the authid is then
    deactivated with no bus message at all (as if missed): the next tick sees it live but
    not active and cuts the tunnel, whose client connection haproxy's stream table names."""
    rig = rig_factory()
    proc = rig.start_sessiond()
    rig.credit(AUTHID, 600 * PER_SECOND)
    tunnel = open_tunnel(rig.haproxy.port, AUTHID)
    rig.wait_message("session.opened", authid=AUTHID)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    rig.start_sessiond()
    with rig.ledger.transaction() as tx:
        tx.deactivate(AUTHID)   # ACTIVE -> DEPLETED, no message: sessiond reads it
    assert closed_by_peer(tunnel, timeout=3.0), "the tunnel is still open"
    cut = rig.wait_message("session.cut", authid=AUTHID)
    assert cut.message.reason == "not active"
    closed = rig.wait_message("session.closed", authid=AUTHID)
    assert closed.message.reason == "cut, not active"
    assert len(rig.ledger.open_sessions()) == 0
    tunnel.close()


def test_issue_4_haproxy_down_never_stops_sessiond(rig_factory):
    """haproxy killed and started again: sessiond logs it, keeps charging, comes back."""
    rig = rig_factory({"max_wait_to_spend": 0, "charge_interval": 0.25}, billing="wallclock")
    proc = rig.start_sessiond()
    rig.credit(AUTHID, 600 * PER_SECOND)
    rig.haproxy.stop()
    wait_for(lambda: "haproxy admin socket" in rig.log("sessiond"), timeout=5,
             what="sessiond to notice haproxy is down")
    charged = rig.ledger.authid(AUTHID).charged_ms
    wait_for(lambda: rig.ledger.authid(AUTHID).charged_ms > charged, timeout=5,
             what="charging to go on while haproxy is down")
    rig.haproxy.start()
    wait_for(lambda: "haproxy: answering again" in rig.log("sessiond"), timeout=5,
             what="sessiond to see haproxy back")
    assert proc.poll() is None
    rig.haproxy.add(AUTHID, "1A")      # authd's resync after a haproxy restart
    tunnel = open_tunnel(rig.haproxy.port, AUTHID)
    rig.wait_message("session.opened", authid=AUTHID)
    tunnel.close()


# --- the whole path: real payment, authd's haproxy and squid, sessiond beside them ---

# monero atomic units: cost 0.001/min = 10^9 per minute; no prepaid minutes are needed,
# so a payment of about 6 seconds' use activates and then runs dry
FULL_PATH_COST_PER_S = 10**9 // 60
FULL_PATH_PAYMENT = 6 * FULL_PATH_COST_PER_S


def test_issue_4_full_path_paid_then_credit_runs_out(proxy_node_factory, tmp_path):
    """Pay a tiny amount through the real wallet -> admitted -> an open CONNECT tunnel
    through TLS and squid; the credit runs out -> sessiond deactivates, the tunnel is closed
    by the node within 2 s, and authd refuses new requests."""
    echo = EchoServer()
    sessiond: subprocess.Popen | None = None
    ctx = zmq.Context()
    try:
        pn = proxy_node_factory({
            "services": [{"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001",
                          "firstPrePaidMinutes": 0, "subsequentPrePaidMinutes": 0,
                          "idleGrace": 0}],
            "proxy": {"allow_destinations": [f"127.0.0.1:{echo.port}"]},
            "sessions": {"tick": 0.25},
        })
        bus = Subscriber(ctx, pn.config.subscribe_endpoint, ["authid.", "session."])
        out = open(tmp_path / "sessiond.out", "ab")
        sessiond = subprocess.Popen(
            [sys.executable, "-m", "services.sessiond.main", "-c", str(pn.node.config_path)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        wait_for(lambda: "sessiond: ready" in (tmp_path / "sessiond.out").read_text(),
                 timeout=10, what="sessiond ready")

        authid = pn.pay_and_wait(amount=FULL_PATH_PAYMENT, timeout=3.0)
        response, tunnel, rest = pn.client.tunnel(f"127.0.0.1:{echo.port}", authid=authid)
        assert response.status == 200, response
        tunnel.sendall(b"ping")
        assert rest + tunnel.recv(4) == b"ping"

        seen: list[Envelope] = []

        def message(topic: str) -> Envelope | None:
            seen.extend(bus.drain())
            return next((e for e in seen if e.topic == topic
                         and e.message.authid == authid), None)
        wait_for(lambda: message("authid.deactivated"), timeout=15,
                 what="authid.deactivated once the credit is spent")
        assert closed_by_peer(tunnel, timeout=5.0), "the tunnel is still open"
        closed_at = time.time()
        ledger = Ledger.open(pn.config.ledger_path)
        try:
            deactivated_at = ledger.conn.execute(
                "SELECT at FROM audit WHERE authid = ? AND event = 'deactivated'",
                (authid,)).fetchone()[0]
            row = ledger.authid(authid)
        finally:
            ledger.close()
        assert closed_at - deactivated_at < 2.0
        assert row.state == "DEPLETED" and 0 < row.spent <= row.credit
        cut = wait_for(lambda: message("session.cut"), timeout=5, what="session.cut")
        assert cut.message.reason == "credit exhausted" and cut.message.connections >= 1
        wait_for(lambda: pn.client.request("GET", pn.origin.url("/after"),
                                           authid=authid).status == 403,
                 timeout=3, what="authd refusing the depleted authid")
        answer = pn.client.request("GET", pn.origin.url("/after"), authid=authid)
        assert answer.lthn_status == "NO_PAYMENT"
        tunnel.close()
        bus.close()
    finally:
        if sessiond is not None:
            os.killpg(sessiond.pid, signal.SIGKILL)
            sessiond.wait(timeout=10)
        echo.close()
        ctx.destroy(linger=0)
