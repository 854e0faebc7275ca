"""Issue #14, a tunnel that is never cut: a CONNECT tunnel opened while sessiond restarts is
cut all the same when its credit runs out.

The whole node runs under supervisord (`lthn-node run`: busd, authd, sessiond, haproxy,
squid; no wallet, the credit is put into the real ledger with lthn.access as paymentd
would). sessiond is killed with SIGKILL and the tunnel opened at once, through TLS,
haproxy and squid to a loopback echo server, before supervisord has a new sessiond up:
nothing about that tunnel reaches any daemon when it opens. The new sessiond finds the
authid live in haproxy's stick table, charges it, and when the credit runs out finds the
tunnel's client connection in haproxy's stream table and cuts it within the usual time.
"""

from __future__ import annotations

import os
import signal
import time

import zmq

from lthn import access
from lthn import config as config_mod
from lthn.bus import Envelope, Subscriber
from lthn.ledger import Ledger
from tests.fixtures.common import wait_for
from tests.fixtures.mini_proxy import EchoServer, closed_by_peer
from tests.fixtures.proxy import ProxyClient, in_haproxy_map
from tests.fixtures.regtest import new_authid

PROGRAMS = ("busd", "authd", "sessiond", "haproxy", "squid")
# monero atomic units: 0.001 coin/min = 10^9 per minute; no prepaid minutes, so a credit
# of 8 seconds' use activates the authid and then runs dry while the tunnel is open
PER_SECOND = 10**9 // 60
CREDIT = 8 * PER_SECOND


def test_issue_14_tunnel_opened_while_sessiond_restarts_is_cut_when_credit_runs_out(run_node):
    echo = EchoServer()
    ctx = zmq.Context()
    try:
        node = run_node({
            "services": [{"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001",
                          "firstPrePaidMinutes": 0, "subsequentPrePaidMinutes": 0,
                          "idleGrace": 0}],
            "proxy": {"allow_destinations": [f"127.0.0.1:{echo.port}"]},
        }, programs=PROGRAMS)
        config = config_mod.load(node.config_path)
        client = ProxyClient(config.proxy.bind, config.proxy.port,
                             config.state / "tls" / "ca.pem")
        bus = Subscriber(ctx, config.subscribe_endpoint, ["authid.", "session."])
        ledger = Ledger.open(config.ledger_path)
        seen: list[Envelope] = []

        def message(topic: str, authid: str) -> Envelope | None:
            seen.extend(bus.drain())
            return next((e for e in seen if e.topic == topic
                         and e.message.authid == authid), None)

        # paid: ACTIVE in the ledger; authd admits it (bus message or its resync)
        authid = new_authid("1A")
        with ledger.transaction() as tx:
            tx.ensure_authid(authid, "1A")
            row = access.reevaluate(tx, tx.credit(authid, CREDIT), access.rules_for(
                config, config.services[0]), "test")
        assert row.state == "ACTIVE"
        # asked of haproxy, not by a request: the tunnel below is the authid's first stream
        wait_for(lambda: in_haproxy_map(config, authid), timeout=10,
                 what="authd admitting the paid authid")

        # sessiond dies; the tunnel opens before supervisord has started another
        old = node.pid("sessiond")
        ready_before = node.log_text("sessiond").count("sessiond: ready")
        os.kill(old, signal.SIGKILL)
        response, tunnel, rest = client.tunnel(f"127.0.0.1:{echo.port}", authid)
        assert response.status == 200, response
        opened_at = time.time()
        assert node.log_text("sessiond").count("sessiond: ready") == ready_before, \
            "a new sessiond was ready before the tunnel opened: the test proves nothing"
        tunnel.sendall(b"ping")
        assert rest + tunnel.recv(4) == b"ping"
        wait_for(lambda: node.pid("sessiond") not in (0, old), timeout=20,
                 what="supervisord restarting sessiond")

        # the new sessiond charges the tunnel it never saw open, then cuts it
        wait_for(lambda: message("authid.deactivated", authid), timeout=20,
                 what="authid.deactivated once the credit is spent")
        assert closed_by_peer(tunnel, timeout=5.0), "the tunnel is still open"
        closed_at = time.time()
        deactivated_at = ledger.conn.execute(
            "SELECT at FROM audit WHERE authid = ? AND event = 'deactivated'",
            (authid,)).fetchone()[0]
        assert deactivated_at > opened_at
        assert closed_at - deactivated_at < 2.0
        cut = wait_for(lambda: message("session.cut", authid), timeout=5, what="session.cut")
        assert cut.message.reason == "credit exhausted" and cut.message.connections >= 1
        row = ledger.authid(authid)
        assert row.state == "DEPLETED" and 0 < row.spent <= row.credit
        assert "no known client connection" not in node.log_text("sessiond")
        tunnel.close()
        bus.close()
        ledger.close()
    finally:
        echo.close()
        ctx.destroy(linger=0)
