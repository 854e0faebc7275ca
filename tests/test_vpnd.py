"""lthn-vpnd's handling of the management stream (issue #18), in-process against
FakeOpenVPNManagement (tests/fixtures/fake_openvpn.py): the order it attaches in, the
command each login gets, what it never sends, what `status 3` makes of a login still being
answered, cutting, and losing OpenVPN. The real OpenVPN: tests/e2e/test_issue_18_vpn.py."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from lthn import access
from lthn.bus import Envelope
from lthn.config import parse
from lthn.ledger import Ledger
from lthn.messages import AccessRefused, BanAdded, SessionKill
from lthn.vpn.contract import read_snapshot
from services.vpn.vpnd import Vpnd
from tests.fixtures.common import wait_for
from tests.fixtures.fake_openvpn import FakeOpenVPNManagement, connect_block, status_row

PAID = "2B00112233445566"
BUSD = "import sys; from services.busd.main import main; sys.exit(main(sys.argv[1:]))"


class Rig:
    def __init__(self, tmp_path, ctx: zmq.Context, tracking: bool = True) -> None:
        self.config = parse({
            "provider": {"id": "ab" * 32}, "state_dir": str(tmp_path / "state"),
            "services": [{"id": "2B", "name": "v", "type": "vpn", "cost": "0.001",
                          "firstPrePaidMinutes": 1}],
            "sessions": {"tracking": tracking},
            "firewall": {"src_deny": str(tmp_path / "src_deny.ips"),
                         "src_allow": str(tmp_path / "src_allow.ips")},
            "vpn": {"enabled": True}}, "test.yaml")
        (tmp_path / "node.yaml").write_text(f"provider: {{id: \"{'ab' * 32}\"}}\n"
                                            f"state_dir: {tmp_path / 'state'}\n")
        self.busd = subprocess.Popen([sys.executable, "-c", BUSD, "-c",
                                      str(tmp_path / "node.yaml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ledger = Ledger.open(self.config.ledger_path)
        with ledger.transaction() as tx:
            tx.ensure_authid(PAID, "2B")
            tx.credit(PAID, 10**9)
            access.reevaluate(tx, tx.authid(PAID), access.rules_for(
                self.config, self.config.services[0]), "test")
        self.fake = FakeOpenVPNManagement(self.config.vpn_management_socket)
        self.vpnd = Vpnd(self.config, ctx, ledger)
        self.published: list = []
        self.vpnd.publish = self.published.append   # type: ignore[method-assign]
        self.vpnd.start()

    def pump(self, until: Callable[[], object], timeout: float = 5.0) -> object:
        """Run vpnd's loop (as Daemon.run does) until `until()` is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sock in self.vpnd.wait(20):
                self.vpnd.handlers[sock]()
            self.vpnd.timers.run_due()
            value = until()
            if value:
                return value
        raise AssertionError(f"vpnd did not get there in {timeout}s; sent {self.fake.lines()}")

    def sent(self, prefix: str) -> list[str]:
        return [line for line in self.fake.lines() if line.startswith(prefix)]

    def attached(self) -> None:
        self.pump(lambda: self.sent("status 3"))

    def snapshot(self) -> dict:
        self.vpnd.write_snapshot()
        return read_snapshot(self.config.vpn_clients_path)

    def close(self) -> None:
        self.vpnd.stop()
        self.vpnd.publisher.close()
        if self.vpnd.subscriber:
            self.vpnd.subscriber.close()
        self.vpnd.ledger.close()
        self.fake.close()
        self.busd.terminate()
        self.busd.wait(timeout=10)


@pytest.fixture
def rig_factory(tmp_path) -> Iterator[Callable[..., Rig]]:
    ctx = zmq.Context()
    made: list[Rig] = []

    def make(**kw: object) -> Rig:
        made.append(Rig(tmp_path, ctx, **kw))
        return made[-1]
    yield make
    for r in made:
        r.close()
    ctx.destroy(linger=0)


@pytest.fixture
def rig(rig_factory) -> Rig:
    return rig_factory()


def test_attaches_then_releases_the_hold_and_only_then_asks_status(rig):
    rig.attached()
    assert rig.fake.lines() == ["pid", "bytecount 5", "hold release", "status 3"]
    assert rig.vpnd.openvpn_pid == 4242


def test_each_login_gets_its_answer_and_refusals_are_published(rig):
    rig.attached()
    rig.fake.send(connect_block(0, 1, PAID, PAID))
    rig.fake.send(connect_block(1, 1, "2BFFFFFFFFFFFFFF", "2BFFFFFFFFFFFFFF", ip="10.99.0.9"))
    rig.pump(lambda: len(rig.sent("client-")) == 2)
    assert rig.sent("client-") == ["client-auth-nt 0 1",
                                   'client-deny 1 1 "NO_PAYMENT" "NO_PAYMENT"']
    assert rig.published == [AccessRefused(reason="NO_PAYMENT", source="10.99.0.9",
                                           authid="2BFFFFFFFFFFFFFF", destination="",
                                           kind="vpn")]


def test_a_smuggled_command_line_is_refused_and_never_sent(rig):
    """A username with a newline in it (as if OpenVPN let one through): the block is not
    whole, the login is refused, and the 'command' inside it reaches nobody."""
    rig.attached()
    block = connect_block(0, 1, PAID, PAID).replace(
        f">CLIENT:ENV,username={PAID}\n", f">CLIENT:ENV,username={PAID}\nclient-kill 7\n")
    rig.fake.send(block)
    rig.pump(lambda: rig.sent("client-deny"))
    assert rig.sent("client-") == ['client-deny 0 1 "BAD_AUTHID" "BAD_AUTHID"']


def test_status_rows_without_a_tunnel_address_are_not_sessions(rig):
    """A login still being answered (or refused and not yet gone) is listed by `status 3`
    without a tunnel address; only the established client is reported live (#18: a
    refused client was once taken for a live one and 'cut')."""
    rig.fake.status_rows = [status_row(3, PAID, "10.98.0.2"),
                            status_row(4, "2BFFFFFFFFFFFFFF", "")]
    rig.attached()
    rig.pump(lambda: rig.vpnd.clients.by_cid)
    clients = rig.snapshot()["clients"]
    assert [(c["cid"], c["authid"], c["live"]) for c in clients] == [(3, PAID, True)]
    assert clients[0]["ref"] == "4242:3:1796139319"


def test_a_kill_request_cuts_every_client_of_the_authid_once(rig):
    rig.fake.status_rows = [status_row(3, PAID, "10.98.0.2"),
                            status_row(5, PAID, "10.98.0.3", source="10.99.0.2:60000")]
    rig.attached()
    rig.pump(lambda: len(rig.vpnd.clients.by_cid) == 2)
    kill = SessionKill(authid=PAID, kind="vpn", reason="credit exhausted", ref="")
    rig.vpnd.kill(kill.authid, kill.reason)
    rig.vpnd.kill(kill.authid, kill.reason)                 # asked again: no second kill
    rig.pump(lambda: not rig.vpnd.killing)
    assert sorted(rig.sent("client-kill")) == ["client-kill 3", "client-kill 5"]
    assert [c["live"] for c in rig.snapshot()["clients"]] == [False, False]
    cuts = [m for m in rig.vpnd.ledger.take_outbox() if m.topic == "session.cut"]
    assert [(m.kind, m.connections, m.reason) for m in cuts] == [("vpn", 2, "credit exhausted")]
    audit = rig.vpnd.ledger.audit_lines(PAID)[-1]
    assert audit[:2] == ("vpnd", "cut") and audit[3]["connections"] == 2


def test_a_kill_with_a_ref_cuts_only_that_client(rig):
    rig.fake.status_rows = [status_row(3, PAID, "10.98.0.2", since=1796139319),
                            status_row(5, PAID, "10.98.0.3", since=1796139400,
                                       source="10.99.0.2:60000")]
    rig.attached()
    rig.pump(lambda: len(rig.vpnd.clients.by_cid) == 2)
    rig.vpnd.on_message(Envelope(SessionKill(authid=PAID, kind="vpn", reason="killed",
                                             ref="4242:5:1796139400"), "sessiond.1", 1, 0.0))
    rig.pump(lambda: rig.sent("client-kill") and not rig.vpnd.killing)
    assert rig.sent("client-kill") == ["client-kill 5"]
    assert [(c["cid"], c["live"]) for c in rig.snapshot()["clients"]] == [(3, True),
                                                                          (5, False)]


def test_a_network_ban_refuses_logins_from_inside_it(rig):
    with rig.vpnd.ledger.transaction() as tx:
        tx.add_ban("10.99.0.0/24", "destination probes", tx.now + 60)
    rig.vpnd.on_message(Envelope(BanAdded(source="10.99.0.0/24", reason="x",
                                          expires=time.time() + 60, count=1),
                                 "firewalld.1", 1, 0.0))
    rig.attached()
    rig.fake.send(connect_block(0, 1, PAID, PAID, ip="10.99.0.9"))
    rig.fake.send(connect_block(1, 1, PAID, PAID, ip="10.99.1.9"))
    rig.pump(lambda: len(rig.sent("client-")) == 2)
    assert rig.sent("client-") == ['client-deny 0 1 "BANNED" "BANNED"', "client-auth-nt 1 1"]


def test_a_source_written_into_the_deny_list_is_refused_until_the_line_goes(rig, tmp_path):
    """The list file is watched on vpnd's timer (no restart, no message): DENY_SRC_IP,
    published as `access.refused` for firewalld (which never counts it toward a ban);
    the line removed, the same source logs in again (issue #17)."""
    rig.attached()
    deny = tmp_path / "src_deny.ips"
    deny.write_text("10.99.0.9\n")
    rig.pump(lambda: rig.vpnd.sources.policy.deny, timeout=2)
    rig.fake.send(connect_block(0, 1, PAID, PAID, ip="10.99.0.9"))
    rig.fake.send(connect_block(1, 1, PAID, PAID, ip="10.99.0.10"))
    rig.pump(lambda: len(rig.sent("client-")) == 2)
    assert rig.sent("client-") == ['client-deny 0 1 "DENY_SRC_IP" "DENY_SRC_IP"',
                                   "client-auth-nt 1 1"]
    assert rig.published == [AccessRefused(reason="DENY_SRC_IP", source="10.99.0.9",
                                           authid="", destination="", kind="vpn")]
    deny.write_text("# nobody\n")
    rig.pump(lambda: not rig.vpnd.sources.policy.deny, timeout=2)
    rig.fake.send(connect_block(2, 1, PAID, PAID, ip="10.99.0.9"))
    rig.pump(lambda: len(rig.sent("client-")) == 3)
    assert rig.sent("client-")[-1] == "client-auth-nt 2 1"


def test_openvpn_going_away_is_said_in_the_snapshot_and_a_new_one_is_attached(rig, tmp_path):
    rig.fake.status_rows = [status_row(3, PAID, "10.98.0.2")]
    rig.attached()
    rig.pump(lambda: rig.vpnd.clients.by_cid)
    rig.fake.close()                                          # OpenVPN stopped
    rig.pump(lambda: not rig.vpnd.link.connected)
    assert rig.snapshot()["openvpn_pid"] == 0 and rig.snapshot()["clients"] == []
    rig.fake = FakeOpenVPNManagement(rig.config.vpn_management_socket, pid=5151)
    rig.pump(lambda: rig.vpnd.openvpn_pid == 5151 and rig.sent("status 3"))
    rig.pump(lambda: not rig.vpnd.clients.by_cid)             # the new one has nobody
    wait_for(lambda: rig.snapshot()["openvpn_pid"] == 5151, timeout=2)


def reauth_block(cid: int, kid: int, authid: str) -> str:
    return connect_block(cid, kid, authid, authid).replace(">CLIENT:CONNECT,",
                                                           ">CLIENT:REAUTH,")


def deplete(rig: Rig) -> None:
    with rig.vpnd.ledger.transaction() as tx:
        access.deactivate(tx, tx.authid(PAID), "credit exhausted", "test")


@pytest.mark.parametrize("tracking,answer", [
    (True, 'client-deny 3 2 "NO_PAYMENT" "NO_PAYMENT"'),
    (False, "client-auth-nt 3 2"),
])
def test_renegotiation_of_an_unpaid_tunnel(rig_factory, tracking, answer):
    """A REAUTH (key renegotiation) of a tunnel whose authid is no longer paid: refused
    (the client drops) while sessions are tracked; let through when tracking is off,
    which leaves running tunnels alone, as it leaves proxy tunnels."""
    rig = rig_factory(tracking=tracking)
    rig.fake.status_rows = [status_row(3, PAID, "10.98.0.2")]
    rig.attached()
    rig.pump(lambda: rig.vpnd.clients.by_cid)
    deplete(rig)
    rig.fake.send(reauth_block(3, 2, PAID))
    rig.fake.send(connect_block(4, 1, PAID, PAID))      # a new login is refused either way
    rig.pump(lambda: len(rig.sent("client-")) == 2)
    assert rig.sent("client-") == [answer, 'client-deny 4 1 "NO_PAYMENT" "NO_PAYMENT"']
