"""Issue #18, VPN mode end to end: a real OpenVPN 2.6 server run by the node under the real
supervisord (busd, sessiond, vpnd, openvpn) in a network namespace of the test's, real
OpenVPN clients in a second, and an "outside" web server in a third (tests/fixtures/vpn.py).

Credit is written into the real ledger through lthn.access where the wallet is not the
subject (as tests/e2e/test_issue_2_foundation.py does); one test pays through a real
Monero regtest wallet and lthn-paymentd.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lthn import access
from lthn import config as config_mod
from lthn.ledger import Ledger
from lthn.node.supervision import tool
from tests.fixtures.common import wait_for
from tests.fixtures.ctl import lthnctl
from tests.fixtures.node import Node, default_config, merge
from tests.fixtures.regtest import new_authid
from tests.fixtures.vpn import (
    NODE_OUTSIDE,
    NODE_TUNNEL,
    OUTSIDE_INTERFACE,
    OUTSIDE_PRIVATE,
    OUTSIDE_SERVER,
    POOL,
    WEB_PORT,
    Namespaces,
    OutsideServer,
    Process,
    VpnClient,
)

PORT = 1194
PROGRAMS = ("busd", "sessiond", "firewalld", "vpnd", "openvpn")
# monero units (10^12 a coin): 0.001 a minute is 16,666,666 a second
PER_SECOND = 10**9 // 60
PLENTY = 10**12                   # 1,000 minutes
SERVICE = {"id": "2B", "name": "VPN", "type": "vpn", "cost": "0.001",
           "firstPrePaidMinutes": 0, "subsequentPrePaidMinutes": 0, "idleGrace": 0}
PROXY_SERVICE = {"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001"}
URL = f"http://{OUTSIDE_SERVER}:{WEB_PORT}/"


def vpn_config(state: Path, **vpn: object) -> dict:
    return merge(default_config(state), {
        "services": [PROXY_SERVICE, SERVICE],
        "vpn": dict({"enabled": True, "port": PORT, "network": POOL,
                     "outside_interface": OUTSIDE_INTERFACE,
                     "allow_networks": [f"{OUTSIDE_SERVER}/32"]}, **vpn),
        "sessions": {"tick": 0.25},
    })


class VpnNode:
    """The node in the node namespace, plus what the tests do to it."""

    def __init__(self, ns: Namespaces, directory: Path, programs: tuple[str, ...] = PROGRAMS,
                 **vpn: object) -> None:
        self.ns = ns
        self.dir = directory
        self.node = Node(directory / "node", vpn_config(directory / "node" / "state", **vpn),
                         programs, prefix=ns.exec(ns.node))
        self.clients: list[VpnClient] = []

    def start(self) -> VpnNode:
        self.node.start(timeout=60)
        self.node.wait_log("vpnd", "logins are answered", timeout=20)
        self.config = config_mod.load(self.node.config_path)
        return self

    @property
    def ca(self) -> Path:
        return self.node.state / "tls" / "ca.pem"

    def client(self, name: str, username: str, password: str | None = None,
               options: list[str] | None = None) -> VpnClient:
        client = VpnClient(self.ns, self.dir / "clients", name, self.ca, PORT, username,
                           username if password is None else password, options)
        self.clients.append(client)
        return client

    def credit(self, authid: str, amount: int) -> None:
        """Credit through lthn.access, as paymentd does (the ledger and the outbox)."""
        ledger = Ledger.open(self.config.ledger_path)
        try:
            with ledger.transaction() as tx:
                service = self.config.service(authid[:2])
                tx.ensure_authid(authid, service.key)
                tx.credit(authid, amount)
                access.reevaluate(tx, tx.authid(authid), access.rules_for(self.config, service),
                                  "test")
        finally:
            ledger.close()

    def audit_time(self, authid: str, event: str) -> float:
        ledger = Ledger.open(self.config.ledger_path)
        try:
            row = ledger.conn.execute("SELECT at FROM audit WHERE authid = ? AND event = ? "
                                      "ORDER BY id DESC", (authid, event)).fetchone()
        finally:
            ledger.close()
        assert row, f"no {event} audit line for {authid}"
        return row[0]

    def sessions(self, authid: str) -> list[tuple[int, str, str, str]]:
        """(id, state, source, adapter ref) of the authid's VPN session rows, oldest first."""
        ledger = Ledger.open(self.config.ledger_path)
        try:
            return ledger.conn.execute(
                "SELECT id, state, source, adapter_ref FROM sessions WHERE authid = ? AND "
                "kind = 'vpn' ORDER BY id", (authid,)).fetchall()
        finally:
            ledger.close()

    def vpnd_log(self) -> str:
        return self.node.log_text("vpnd")

    def stop_clients(self) -> None:
        for client in self.clients:
            client.stop()
        self.clients.clear()


@pytest.fixture(scope="module")
def vpn(namespaces: Namespaces, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VpnNode]:
    directory = tmp_path_factory.mktemp("vpn")
    node = VpnNode(namespaces, directory)
    server = OutsideServer(namespaces, directory)
    try:
        yield node.start()
    finally:
        node.stop_clients()
        server.stop()
        node.node.stop()


@pytest.fixture
def clients(vpn: VpnNode) -> Iterator[VpnNode]:
    """The node, with the clients a test started stopped after it."""
    yield vpn
    vpn.stop_clients()


def test_issue_18_paid_authid_gets_a_tunnel_that_reaches_out_through_nat(clients, namespaces):
    """Paid authid -> tunnel up -> the outside server sees the node's outside address
    (NAT), while the node's own addresses and private ranges stay out of reach; the
    client's session is open in the ledger with its real source address."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    client = clients.client("paid", authid)
    client.wait_connected()
    assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                    what="the outside server through the tunnel") == NODE_OUTSIDE
    for blocked in (NODE_OUTSIDE, NODE_TUNNEL, OUTSIDE_PRIVATE):
        assert not namespaces.ping(namespaces.client, blocked), blocked
    assert namespaces.ping(namespaces.client, OUTSIDE_SERVER)
    (_, state, source, _), = wait_for(lambda: clients.sessions(authid), timeout=5,
                                      what="the VPN session row")
    assert state == "OPEN" and source.startswith("10.99.0.2:")
    assert f"login admitted (authid {authid[:8]}... is active)" in clients.vpnd_log()


def test_issue_18_refused_logins_say_why(clients):
    """Wrong password, unknown, unpaid and proxy-service authids are refused, each with its
    reason in vpnd's log and in the client's AUTH_FAILED."""
    paid, unpaid, proxy = new_authid("2B"), new_authid("2B"), new_authid("1A")
    clients.credit(paid, PLENTY)
    clients.credit(proxy, PLENTY)
    clients.credit(unpaid, 0)                     # known, never paid: PENDING
    cases = {
        "wrong-password": (paid, paid[:-1] + ("0" if paid[-1] != "0" else "1"), "BAD_PASSWORD",
                           "the password is not the authid"),
        "unknown": (new_authid("2B"), None, "NO_PAYMENT", "is unknown"),
        "unpaid": (unpaid, None, "NO_PAYMENT", "is not active (PENDING)"),
        "proxy-authid": (proxy, None, "NO_PAYMENT", "service 1A is a proxy service, not vpn"),
    }
    started = {name: clients.client(name, user, password)
               for name, (user, password, _, _) in cases.items()}
    for name, client in started.items():
        _, _, reason, detail = cases[name]
        client.wait_exit(timeout=20)              # auth-retry none: AUTH_FAILED ends it
        assert f"AUTH_FAILED,{reason}" in client.log(), client.log()[-2000:]
        assert re.search(rf"login refused {reason} \(.*{re.escape(detail)}\)",
                         clients.vpnd_log()), (name, clients.vpnd_log()[-3000:])
        assert "Initialization Sequence Completed" not in client.log()


LETHEAN_CLIENT = [            # upstream conf/openvpn_client.tmpl (notes/lethean-protocol.md)
    "client", "dev tun", "nobind", "remote-cert-tls server", "tun-mtu 1400", "mssfix 1300",
    "float", "persist-tun", "persist-key", "auth SHA256", "cipher AES-256-CBC",
    "auth-retry nointeract", "redirect-gateway def1", "verb 3",
]


def test_issue_18_original_lethean_client_options_connect(clients, namespaces):
    """The original client's config, unchanged (upper-case authid on both lines), gets a
    tunnel; so does a client that offers AES-256-CBC only, as pre-2.4 clients did."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    lethean = clients.client("lethean", authid.upper(),
                             options=[*LETHEAN_CLIENT, "proto udp"])
    lethean.wait_connected()
    assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                    what="the outside server through the tunnel") == NODE_OUTSIDE
    lethean.stop()
    cbc = clients.client("cbc-only", authid, options=[
        *LETHEAN_CLIENT, "proto udp", "data-ciphers AES-256-CBC"])
    cbc.wait_connected()
    assert "Data Channel: cipher 'AES-256-CBC'" in cbc.log()
    assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                    what="the outside server through a CBC tunnel") == NODE_OUTSIDE


def ping_log(namespaces: Namespaces, directory: Path, name: str) -> Process:
    """A ping every 20 ms from the client namespace to the outside server, with times."""
    return Process([*namespaces.exec(namespaces.client), "ping", "-D", "-n", "-i", "0.02",
                    "-W", "1", OUTSIDE_SERVER], directory / f"{name}.ping")


def last_reply(ping: Process) -> float:
    times = re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", ping.log(), re.M)
    assert times, "no ping reply at all"
    return float(times[-1])


def test_issue_18_credit_runs_out_cut_within_1s_refused_until_topped_up(clients, namespaces):
    """A client whose credit runs out stops passing traffic within 1 s of the node
    deactivating the authid (client-kill); it logs in again (auth-retry nointeract, like
    Lethean's) and is refused NO_PAYMENT; after a top-up the authid is let in again."""
    authid = new_authid("2B")
    clients.credit(authid, 4 * PER_SECOND)
    client = clients.client("runs-dry", authid, options=[*LETHEAN_CLIENT, "proto udp"])
    client.wait_connected()
    ping = ping_log(namespaces, clients.dir, "runs-dry")
    try:
        wait_for(lambda: "bytes from" in ping.log(), timeout=5, what="ping replies")
        clients.node.wait_log("vpnd", f"authid {authid[:8]}...: cut 1 VPN clients, credit "
                              "exhausted", timeout=20)
        deactivated = clients.audit_time(authid, "deactivated")
        time.sleep(1.5)      # let any straggling reply arrive before reading the last one
        assert last_reply(ping) - deactivated < 1.0, (last_reply(ping), deactivated)
        cut = clients.audit_time(authid, "cut")
        assert cut - deactivated < 1.0
        clients.node.wait_log("vpnd", f"refused NO_PAYMENT (authid {authid[:8]}... is not "
                              "active (DEPLETED))", timeout=30)
        assert not namespaces.fetch(namespaces.client, URL, timeout=1)
        client.stop()   # it would retry in 10 s (auth-retry nointeract); the real-payment
        clients.credit(authid, PLENTY)   # test shows that; here a new login is enough
        clients.client("topped-up", authid).wait_connected()
        assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                        what="traffic after the top-up") == NODE_OUTSIDE
    finally:
        ping.stop()


def test_issue_18_hostile_usernames_are_refused_and_change_nothing(clients, namespaces):
    """Usernames carrying a line break, a management command, quotes or 600 characters
    are refused BAD_AUTHID; a paid client connected meanwhile keeps its tunnel."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    paid = clients.client("bystander", authid)
    paid.wait_connected()
    # the client can say it is connected before vpnd's line about it is in the log
    cid = wait_for(lambda: re.findall(r"vpn client (\d+): connected, authid " + authid[:8],
                                      clients.vpnd_log()), timeout=5, what="vpnd's line")
    hostile = {
        "carriage-return": (f"{authid}\rclient-kill {cid[-1]}", authid),
        "command": (f"client-kill {cid[-1]}", authid),
        "quotes": (f'{authid}" "x', f'{authid}"\rclient-kill {cid[-1]}'),
        "long": ("A" * 600, authid),
    }
    started = [clients.client(name, user, password)
               for name, (user, password) in hostile.items()]
    for client in started:
        client.wait_exit(timeout=20)
        assert "AUTH_FAILED" in client.log(), client.log()[-1500:]
    log = clients.vpnd_log()
    assert log.count("login refused BAD_AUTHID") >= len(hostile), log[-3000:]
    assert "cut" not in log.split(f"client {cid[-1]}: connected")[-1].replace("cutting", "")
    assert paid.proc.poll() is None
    assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                    what="the bystander's tunnel") == NODE_OUTSIDE


def test_issue_18_openvpn_restart_vpnd_reattaches_and_paid_clients_return(clients, namespaces):
    """supervisorctl restart openvpn: vpnd loses the management connection, attaches to
    the new OpenVPN and reconciles; the paid client (told by explicit-exit-notify)
    reconnects and passes traffic again; its old session is closed, a new one opened."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    client = clients.client("survivor", authid)
    client.wait_connected()
    before = clients.vpnd_log().count("attached to the management socket")
    result = clients.node.ctl("restart", "openvpn")
    assert result.returncode == 0, result.stdout + result.stderr
    clients.node.wait_log("vpnd", "attached to the management socket", timeout=20)
    wait_for(lambda: clients.vpnd_log().count("attached to the management socket") > before,
             timeout=20, what="vpnd attached to the new OpenVPN")
    assert "management connection lost" in clients.vpnd_log()
    client.wait_connected(count=2, timeout=30)
    assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                    what="traffic after the restart") == NODE_OUTSIDE
    rows = wait_for(lambda: (lambda r: r if len(r) >= 2 and r[-1][1] == "OPEN" else None)(
        clients.sessions(authid)), timeout=5, what="a new session row for the client")
    assert rows[0][1] == "CLOSED"
    assert rows[0][3].split(":")[0] != rows[-1][3].split(":")[0]   # another OpenVPN pid


def test_issue_18_vpnd_restart_keeps_tunnels_and_their_sessions(clients, namespaces):
    """supervisorctl restart vpnd: the connected client's tunnel carries on, its session
    row stays the same open row (vpnd reports the same client again after `status 3`),
    and a new login is answered by the new vpnd."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    client = clients.client("steady", authid)
    client.wait_connected()

    def open_rows() -> list[int]:
        return [row[0] for row in clients.sessions(authid) if row[1] == "OPEN"]
    before = wait_for(open_rows, timeout=5, what="the session row")
    attached = clients.vpnd_log().count("logins are answered")
    result = clients.node.ctl("restart", "vpnd")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: clients.vpnd_log().count("logins are answered") > attached, timeout=20,
             what="the new vpnd attached")
    # the new vpnd learnt the client from `status 3` (others may be there still: OpenVPN
    # keeps a UDP client that said goodbye for a few seconds)
    assert re.search(r"[1-9]\d* clients connected \(attach: [1-9]\d* new to us, 0 gone\)",
                     clients.vpnd_log().rsplit("vpnd: stopped", 1)[-1])
    assert namespaces.fetch(namespaces.client, URL) == NODE_OUTSIDE
    time.sleep(1.0)      # a few sessiond ticks on the new vpnd's snapshots
    assert open_rows() == before
    other = new_authid("2B")
    clients.credit(other, PLENTY)
    clients.client("after-restart", other).wait_connected()


def test_issue_18_operator_kills_a_vpn_session_and_bans_a_source(clients, namespaces):
    """`lthnctl session kill` of a VPN session cuts that client (its row closes as killed,
    the authid stays paid, so it logs in again); `lthnctl ban add` of the client's address
    refuses its next login BANNED, `ban del` lets it in again."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    client = clients.client("operator", authid)
    client.wait_connected()
    session_id = wait_for(lambda: [r[0] for r in clients.sessions(authid) if r[1] == "OPEN"],
                          timeout=5, what="the session row")[0]
    ran = lthnctl(clients.node, "session", "kill", str(session_id), "--reason", "e2e",
                  "--json")
    assert ran.code == 0 and ran.json()["connections"] == 1, ran.stderr
    client.wait_log("Connection reset command was pushed by server", timeout=5)
    row = wait_for(lambda: [r for r in clients.sessions(authid) if r[0] == session_id
                            and r[1] == "CLOSED"], timeout=5, what="the killed row")
    assert row
    client.wait_connected(count=2, timeout=20)      # still paid: it comes back
    assert lthnctl(clients.node, "ban", "add", "10.99.0.0/24", "--reason", "e2e").code == 0
    refused = clients.client("banned", authid)
    refused.wait_exit(timeout=20)                   # auth-retry none: it gives up
    assert "AUTH_FAILED,BANNED" in refused.log()
    assert lthnctl(clients.node, "ban", "del", "10.99.0.0/24", "--reason", "e2e").code == 0
    clients.client("unbanned", authid).wait_connected()


def test_issue_17_vpn_source_in_the_deny_list_is_refused_until_the_line_goes(clients):
    """The client's address written into `src_deny.ips` (nothing restarted): its login is
    refused DENY_SRC_IP within a second of the save, though its authid is paid; the line
    removed, the same client logs in again."""
    authid = new_authid("2B")
    clients.credit(authid, PLENTY)
    deny = clients.config.list_path("src_deny")
    mark = len(clients.vpnd_log())
    deny.write_text("# e2e (#17)\n10.99.0.2\n")
    try:
        clients.node.wait_log("vpnd", f"{deny}: 1 entries (was 0), applied", timeout=5,
                              after=mark)
        refused = clients.client("denied", authid)
        refused.wait_exit(timeout=20)               # auth-retry none: it gives up
        assert "AUTH_FAILED,DENY_SRC_IP" in refused.log(), refused.log()[-1500:]
        assert "login refused DENY_SRC_IP (10.99.0.2 is in the source deny list " \
            "(src_deny.ips))" in clients.vpnd_log()[mark:]
    finally:
        mark = len(clients.vpnd_log())
        deny.write_text("# e2e (#17): emptied\n")
    clients.node.wait_log("vpnd", f"{deny}: 0 entries (was 1), applied", timeout=5,
                          after=mark)
    clients.client("readmitted", authid).wait_connected()


def test_issue_18_real_payment_opens_the_tunnel(clients, regtest, namespaces):
    """A real regtest payment for an authid: lthn-paymentd (beside the node: the wallet
    listens on the host's loopback) credits it, and the client that was refused
    NO_PAYMENT gets its tunnel without being restarted."""
    authid = new_authid("2B")
    config = dict(clients.node.config, wallet=regtest.wallet_section())
    path = clients.dir / "paymentd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    paymentd = Process([tool("lthn-paymentd"), "-c", str(path)], clients.dir / "paymentd.log")
    try:
        paymentd.wait_log("paymentd: ready", timeout=20)
        client = clients.client("pays", authid, options=[*LETHEAN_CLIENT, "proto udp"])
        clients.node.wait_log("vpnd", f"refused NO_PAYMENT (authid {authid[:8]}... is "
                              "unknown)", timeout=20)
        regtest.pay(authid, 60 * PER_SECOND * 10)     # ten minutes
        regtest.mine(1)
        paymentd.wait_log(f"authid {authid[:8]}", timeout=30)
        client.wait_connected(timeout=40)
        assert wait_for(lambda: namespaces.fetch(namespaces.client, URL), timeout=5,
                        what="traffic after a real payment") == NODE_OUTSIDE
    finally:
        paymentd.stop()


def test_issue_18_node_rules_are_gone_after_it_stops(tmp_path):
    """A node of its own in fresh namespaces: its nftables table and forwarding are there
    while it runs, and gone (forwarding back off) once it stops."""
    ns = Namespaces().create()
    try:
        node = VpnNode(ns, tmp_path, programs=("busd", "vpnd", "openvpn")).start()
        listed = subprocess.run([*ns.exec(ns.node), "nft", "list", "table", "inet", "lthn_vpn"],
                                capture_output=True, text=True, check=False)
        assert listed.returncode == 0 and "masquerade" in listed.stdout
        assert Path(f"/proc/{node.node.pid('openvpn')}").exists()
        forwarding = subprocess.run([*ns.exec(ns.node), "sysctl", "-n", "net.ipv4.ip_forward"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        assert forwarding == "1"
        node.node.stop()
        tables = subprocess.run([*ns.exec(ns.node), "nft", "list", "tables"],
                                capture_output=True, text=True, check=True).stdout
        assert "lthn_vpn" not in tables
        forwarding = subprocess.run([*ns.exec(ns.node), "sysctl", "-n", "net.ipv4.ip_forward"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        assert forwarding == "0"
        assert "egress: table inet lthn_vpn removed" in node.node.log_text("openvpn")
    finally:
        ns.delete()
