"""Issue 19: lthnctl's commands against one running node (every program, real haproxy and
squid, no wallet): bans, refresh, reload, metrics scraped and parsed, access by hand
through the real proxy (grant admits, revoke refuses, session kill cuts a CONNECT
tunnel, topup and spend), and the audit log holding a line for every change, anonymised.
The tests share the node and run in file order; the audit test comes last."""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
import zmq
from prometheus_client.parser import text_string_to_metric_families

from lthn.bus import Subscriber
from lthn.config import load as load_config
from lthn.control import unix_user
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.ledger import Ledger
from tests.fixtures.common import free_port, wait_for
from tests.fixtures.ctl import lthnctl, lthnctl_with, table
from tests.fixtures.node import ALL_PROGRAMS, Node, default_config, merge
from tests.fixtures.proxy import Origin, ProxyClient, TcpListener, _origin_handler

INTERVAL = 1.0


class Rig:
    """A node with every program, an HTTP and a TCP origin on loopback, a bus listener."""

    def __init__(self, directory: Path) -> None:
        self.origin = Origin(port=0)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _origin_handler(self.origin))
        self.origin.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.tcp = TcpListener(b"hello from the tcp origin\n")
        self.metrics_port = free_port()
        config = merge(default_config(directory / "state"), {
            "bus": {"heartbeat_interval": INTERVAL},
            "metrics": {"port": self.metrics_port},
            "sessions": {"tick": 0.5},
            "proxy": {"allow_destinations": [f"127.0.0.1:{self.origin.port}",
                                             f"127.0.0.1:{self.tcp.port}"]},
        })
        self.node = Node(directory, config, ALL_PROGRAMS)
        self.node.start()
        self.config = load_config(self.node.config_path)
        self.client = ProxyClient("127.0.0.1", self.config.proxy.port,
                                  self.config.state / "tls" / "ca.pem")
        self.ctx = zmq.Context()
        self.bus = Subscriber(self.ctx, self.config.subscribe_endpoint,
                              ["ban.", "session.", "authid.", "access."])
        self.seen: list = []
        wait_for(lambda: self.client.request("GET", self.origin.url("/")).status == 403,
                 timeout=20, what="haproxy answering")

    def messages(self, topic: str) -> list:
        self.seen += self.bus.drain()
        return [e.message for e in self.seen if e.topic == topic]

    def wait_message(self, topic: str, match=lambda m: True, timeout: float = 10.0):
        return wait_for(lambda: next((m for m in self.messages(topic) if match(m)), None),
                        timeout=timeout, what=f"{topic} on the bus")

    def ctl(self, *args: str):
        return lthnctl(self.node, *args)

    def scrape(self) -> dict:
        """{metric family name: family} from a real scrape, parsed by prometheus_client."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}

    def audit_lines(self) -> list[dict]:
        path = self.config.audit_log_path
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        self.bus.close()
        self.ctx.destroy(linger=0)
        self.node.stop()
        self.server.shutdown()
        self.server.server_close()
        self.tcp.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    made = Rig(tmp_path_factory.mktemp("issue19cmd"))
    try:
        yield made
    finally:
        made.close()


def samples(family, **labels) -> list:
    return [s for s in family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict, name: str, sample: str | None = None, **labels) -> float:
    found = [s for s in samples(families[name], **labels) if s.name == (sample or name)]
    assert found, f"no {sample or name} {labels} in {families[name].samples}"
    return sum(s.value for s in found)


def test_ban_add_list_del_with_bus_messages_and_expiry(rig):
    ran = rig.ctl("ban", "add", "198.51.100.23", "--for", "1h", "--reason", "probing",
                  "--json")
    assert ran.code == EXIT_OK, ran.stderr
    added = ran.json()
    assert added["address"] == "198.51.100.23" and added["reason"] == "probing"
    msg = rig.wait_message("ban.added", lambda m: m.source == "198.51.100.23")
    assert msg.reason == "probing" and msg.expires == pytest.approx(added["expires"])
    # long enough for the two listings below on a busy machine, where one lthnctl call
    # can take a second or two (with 2 s it had expired before the listing, #14)
    ran = rig.ctl("ban", "add", "198.51.100.77/24", "--for", "8s", "--reason", "scan")
    assert ran.code == EXIT_OK and ran.stdout.startswith("198.51.100.0/24: banned until")
    listed = rig.ctl("ban", "list", "--json").json()["bans"]
    assert [b["address"] for b in listed] == ["198.51.100.0/24", "198.51.100.23"]
    rows = table(rig.ctl("ban", "list").stdout)
    assert rows[1]["ADDRESS"] == "198.51.100.23" and rows[1]["REASON"] == "probing"
    # the short one runs out: ban.lifted "expired", once
    rig.wait_message("ban.lifted", lambda m: m.source == "198.51.100.0/24", timeout=20)
    assert [m.reason for m in rig.messages("ban.lifted")
            if m.source == "198.51.100.0/24"] == ["expired"]
    assert [b["address"] for b in rig.ctl("ban", "list", "--json").json()["bans"]] == [
        "198.51.100.23"]
    ran = rig.ctl("ban", "del", "198.51.100.23")
    assert ran.code == EXIT_OK and ran.stdout.strip() == "198.51.100.23: ban lifted"
    assert rig.wait_message("ban.lifted", lambda m: m.source == "198.51.100.23").reason == \
        "lifted by hand"
    ran = rig.ctl("ban", "del", "198.51.100.23")
    assert ran.code == EXIT_FAILED and ran.stderr.strip() == \
        "Error: 198.51.100.23: not banned"
    assert rig.ctl("ban", "list").stdout.strip() == "no bans in force"
    ran = rig.ctl("ban", "add", "not-an-address", "--reason", "x")
    assert ran.code == EXIT_CONFIG and "is not an IP address or network" in ran.stderr
    ran = rig.ctl("ban", "add", "198.51.100.5", "--for", "soon", "--reason", "x")
    assert ran.code == EXIT_CONFIG and "--for: must be a duration" in ran.stderr
    ran = rig.ctl("ban", "add", "198.51.100.5")
    assert ran.code == EXIT_CONFIG and "--reason" in ran.stderr
    # every change is in the audit log, with who did it, and no address in full
    def audited():
        events = [(x["event"], x["actor"]) for x in rig.audit_lines()]
        return events if ("ban expired", "firewalld") in events else None
    events = wait_for(audited, timeout=10, what="ban lines in the audit log")
    user = f"lthnctl:{unix_user()}"
    assert events.count(("banned", user)) == 2 and ("unbanned", user) in events
    assert "198.51.100" not in rig.config.audit_log_path.read_text()


def test_metrics_parse_and_count_what_happened(rig):
    # a refusal at haproxy (no payment header) and a status answer by authd
    assert rig.client.request("GET", rig.origin.url("/metrics-probe")).lthn_status == \
        "NO_PAYMENT"
    status = urllib.request.Request(
        f"http://127.0.0.1:{rig.config.proxy.status_port}/status",
        headers={"X-LTHN-MgmtID": rig.config.provider.id, "X-LTHN-PaymentID": "1A" + "0" * 14})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(status, timeout=10)
    assert refused.value.code == 403

    def scraped():
        families = rig.scrape()
        ok = (samples(families["lthn_refusals"], reason="NO_PAYMENT")
              and "lthn_auth_decisions" in families and "lthn_wallet_polls" in families)
        return families if ok else None
    families = wait_for(scraped, timeout=15, interval=0.3, what="metrics with a refusal")
    assert value(families, "lthn_refusals", "lthn_refusals_total", reason="NO_PAYMENT") >= 1
    assert value(families, "lthn_auth_decisions", "lthn_auth_decisions_total",
                 decision="NO_PAYMENT", process="authd_0") >= 1
    assert value(families, "lthn_auth_decision_seconds", "lthn_auth_decision_seconds_count",
                 process="authd_0") >= 1
    assert families["lthn_auth_decision_seconds"].type == "histogram"
    assert value(families, "lthn_wallet_polls", "lthn_wallet_polls_total", result="error",
                 process="paymentd") >= 1
    assert value(families, "lthn_wallet_up", process="paymentd") == 0
    assert value(families, "lthn_wallet_height", process="paymentd") == 0
    for process in ("paymentd", "authd_0", "sessiond", "firewalld", "watchd"):
        assert value(families, "lthn_daemon_up", process=process) == 1
        assert value(families, "lthn_daemon_answering", process=process) == 1
    assert value(families, "lthn_bus_messages", "lthn_bus_messages_total",
                 topic="node.heartbeat") >= 5
    assert value(families, "lthn_bus_messages", "lthn_bus_messages_total",
                 topic="access.refused") >= 1
    assert "lthn_authids" in families
    assert value(families, "lthn_outbox_depth", state="queued") == 0
    assert value(families, "lthn_outbox_depth", state="stuck") == 0
    for name in ("lthn_bans", "lthn_payments", "lthn_payments_amount_atomic",
                 "lthn_sessions_open", "lthn_bus_dropped", "lthn_requests"):
        assert name in families, name


def test_refresh_asks_each_owner_and_says_what_it_did(rig):
    ran = rig.ctl("refresh", "--json")
    # paymentd answers (its wallet is down), so every process did its part
    assert ran.code == EXIT_OK, ran.stderr
    rows = {r["process"]: r for r in ran.json()["processes"]}
    assert set(rows) == {"paymentd", "sessiond", "authd_0"}
    assert all(r["ok"] for r in rows.values())
    assert rows["paymentd"]["detail"].startswith("paymentd: polled the wallet: down")
    assert rows["sessiond"]["detail"].startswith("sessiond: reconciled")
    assert "resynced haproxy's map" in rows["authd_0"]["detail"]


def test_reload_checks_the_config_first_then_signals_the_daemons(rig, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(rig.node.config_path.read_text().replace("log_level:", "log_levle:"))
    ran = lthnctl_with(broken, "reload")
    assert ran.code == EXIT_CONFIG
    assert ran.stderr.startswith(f"Error: {broken}: log_levle: unknown key")
    before = {p: len(rig.node.log_text(p)) for p in ("paymentd", "sessiond", "watchd")}
    data = yaml.safe_load(rig.node.config_path.read_text())
    data.setdefault("firewall", {})["refusal_threshold"] = 7   # the rig's other settings stay
    rig.node.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        ran = rig.ctl("reload", "--json")
        assert ran.code == EXIT_OK, ran.stderr
        # haproxy and squid reload too since issue #15 (the same as `lthn-node reload`)
        assert set(ran.json()["signalled"]) == {"paymentd", "authd_0", "sessiond",
                                                 "firewalld", "watchd", "squid", "haproxy"}
        assert ran.json()["restarts"] == [{"setting": "firewall.refusal_threshold",
                                           "restart": "firewalld"}]
        for program, at in before.items():
            rig.node.wait_log(program, "firewall.refusal_threshold (restart firewalld)",
                              after=at)
    finally:
        rig.node.write_config()


# --- access by hand, through the real proxy ---

def new_authid() -> str:
    return "1A" + secrets.token_hex(7).upper()


def admitted(rig, authid: str) -> bool:
    return rig.client.request("GET", rig.origin.url("/probe"), authid=authid).status == 200


def refused(rig, authid: str) -> bool:
    answer = rig.client.request("GET", rig.origin.url("/probe"), authid=authid)
    return answer.status == 403 and answer.lthn_status == "NO_PAYMENT"


def open_tunnel(rig, authid: str):
    answer, sock, rest = rig.client.tunnel(f"127.0.0.1:{rig.tcp.port}", authid=authid)
    assert answer.status == 200, answer
    greeting = rest
    while b"\n" not in greeting:
        greeting += sock.recv(4096)
    assert greeting.startswith(b"hello from the tcp origin")
    return sock


def wait_closed(sock, timeout: float = 10.0) -> None:
    sock.settimeout(timeout)
    try:
        assert sock.recv(4096) == b""
    except (ConnectionError, ssl.SSLError):
        pass   # reset by haproxy: cut just the same


def open_session_of(rig, authid: str) -> dict:
    def found():
        sessions = rig.ctl("session", "list", "--authid", authid, "--json").json()["sessions"]
        return next((s for s in sessions if s["state"] == "OPEN"), None)
    return wait_for(found, timeout=15, interval=0.3, what=f"an open session of {authid}")


def test_grant_admits_through_the_proxy_and_revoke_refuses_and_cuts(rig):
    authid = new_authid()
    assert refused(rig, authid)
    ran = rig.ctl("authid", "grant", authid.lower(), "--minutes", "30", "--reason", "trial",
                  "--json")
    assert ran.code == EXIT_OK, ran.stderr
    granted = ran.json()
    assert granted == {"authid": authid, "state": "ACTIVE", "credit": 30 * 10**9,
                       "spent": 0, "balance": 30 * 10**9, "changed": True}
    wait_for(lambda: admitted(rig, authid), timeout=10, what="granted authid admitted")
    listed = rig.ctl("authid", "list", "--state", "active", "--json").json()["authids"]
    assert authid in [a["authid"] for a in listed]
    shown = rig.ctl("authid", "show", authid)
    # coins in the table (it is being charged already: the probe opened a session)
    assert shown.code == EXIT_OK and "credit           0.030000000000" in shown.stdout
    assert rig.ctl("authid", "show", authid, "--json").json()["credit"] == 30 * 10**9
    tunnel = open_tunnel(rig, authid)
    ran = rig.ctl("authid", "revoke", authid, "--reason", "abuse report", "--json")
    assert ran.code == EXIT_OK, ran.stderr
    assert ran.json()["state"] == "REVOKED" and ran.json()["credit"] == 30 * 10**9
    wait_closed(tunnel)
    tunnel.close()
    wait_for(lambda: refused(rig, authid), timeout=10, what="revoked authid refused")
    assert rig.ctl("authid", "revoke", authid, "--reason", "again", "--json").json()[
        "changed"] is False
    # paying more does not undo a revoke; a grant does
    ran = rig.ctl("topup", authid, "0.05", "--reason", "paid by bank transfer")
    assert ran.code == EXIT_OK and "now REVOKED" in ran.stdout
    assert refused(rig, authid)
    assert rig.ctl("authid", "grant", authid, "--reason", "sorted out").code == EXIT_OK
    wait_for(lambda: admitted(rig, authid), timeout=10, what="granted again")
    rows = table(rig.ctl("authid", "list", "--state", "ACTIVE").stdout)
    assert any(r["AUTHID"] == authid and r["STATE"] == "ACTIVE" for r in rows)


def test_session_kill_cuts_a_live_connect_tunnel_and_the_authid_stays(rig):
    authid = new_authid()
    assert rig.ctl("authid", "grant", authid, "--reason", "kill test").code == EXIT_OK
    wait_for(lambda: admitted(rig, authid), timeout=10, what="admitted")
    tunnel = open_tunnel(rig, authid)
    session = open_session_of(rig, authid)
    assert session["kind"] == "proxy" and session["service"] == "1A"
    shown = rig.ctl("session", "show", str(session["id"]), "--json").json()
    assert shown["authid"] == authid and shown["state"] == "OPEN"
    families = rig.scrape()
    assert value(families, "lthn_sessions_open", service="1A", kind="proxy") >= 1
    rows = table(rig.ctl("session", "list").stdout)
    assert any(r["ID"] == str(session["id"]) and r["AUTHID"] == authid for r in rows)
    ran = rig.ctl("session", "kill", str(session["id"]), "--reason", "operator test",
                  "--json")
    assert ran.code == EXIT_OK, ran.stderr
    assert ran.json()["connections"] >= 1 and ran.json()["authid"] == authid
    wait_closed(tunnel)
    tunnel.close()

    def closed():
        row = rig.ctl("session", "show", str(session["id"]), "--json").json()
        return row if row["state"] == "CLOSED" else None
    row = wait_for(closed, timeout=15, interval=0.3, what="the killed session closed")
    assert row["end_reason"] == f"cut, killed by lthnctl:{unix_user()}: operator test"
    assert admitted(rig, authid)   # killing a session does not refuse the authid
    ran = rig.ctl("session", "kill", str(session["id"]), "--reason", "again")
    assert ran.code == EXIT_FAILED
    assert ran.stderr.startswith(f"Error: sessiond: session {session['id']}: already closed")
    ran = rig.ctl("session", "kill", "999999", "--reason", "x")
    assert ran.code == EXIT_FAILED and "not in the ledger" in ran.stderr


def test_topup_and_spend_by_hand(rig):
    authid = new_authid()
    ran = rig.ctl("topup", authid, "0.004", "--reason", "goodwill", "--json")
    assert ran.code == EXIT_OK, ran.stderr
    assert ran.json()["state"] == "PENDING" and ran.json()["balance"] == 4 * 10**9
    ran = rig.ctl("topup", authid, "0.006", "--reason", "goodwill 2", "--json")
    assert ran.json()["state"] == "ACTIVE"   # ten prepaid minutes now: the rules admit it
    ran = rig.ctl("spend", authid, "0.0025", "--reason", "manual charge", "--json")
    assert ran.code == EXIT_OK, ran.stderr
    assert ran.json()["balance"] == 10 * 10**9 - 25 * 10**8
    ran = rig.ctl("spend", authid, "1", "--reason", "too much")
    assert ran.code == EXIT_FAILED and "less than" in ran.stderr
    for bad, words in ((("topup", authid, "lots"), "coins: must be a number"),
                       (("topup", authid, "0.0000000000001"), "finer than one atomic unit"),
                       (("topup", "2B" + authid[2:], "1"), "service 2B is not in the config"),
                       (("spend", "short", "1"), "is not 16 hex characters"),
                       (("topup", authid, "1", "--reason", " "), "--reason: must not be empty")):
        args = [*bad] if "--reason" in bad else [*bad, "--reason", "x"]
        ran = rig.ctl(*args)
        assert ran.code == EXIT_CONFIG and words in ran.stderr, (bad, ran.stderr)


def test_the_audit_log_holds_every_change_and_no_client_address(rig):
    """Last in the module: every audit row of the ledger is in the file, once and in order,
    anonymised (every client here comes from 127.0.0.1)."""
    ledger = Ledger.open_existing(rig.config.ledger_path)
    try:
        rows = ledger.audit_after(0, 1_000_000)
        granted = [a.authid for a in ledger.list_authids()]
    finally:
        ledger.close()

    def caught_up():
        lines = rig.audit_lines()
        return lines if lines and lines[-1]["id"] >= rows[-1].id else None
    lines = wait_for(caught_up, timeout=10, what="the audit log caught up with the ledger")
    assert [x["id"] for x in lines][:len(rows)] == [r.id for r in rows]
    assert [(x["event"], x["actor"]) for x in lines][:len(rows)] == [
        (r.event, r.actor) for r in rows]
    user = f"lthnctl:{unix_user()}"
    by_event: dict[str, set[str]] = {}
    for x in lines:
        by_event.setdefault(x["event"], set()).add(x["actor"])
    for event in ("granted", "revoked", "topped up", "spent by hand", "banned", "unbanned"):
        assert by_event.get(event) == {user}, (event, by_event.get(event))
    assert user in by_event["cut"]                       # session kill and revoke
    for event in ("activated", "session opened", "session closed", "ban expired"):
        assert event in by_event, event
    text = rig.config.audit_log_path.read_text()
    assert "127.0.0.1" not in text and "198.51.100" not in text
    assert granted and not any(a in text for a in granted)
    opened = [x for x in lines if x["event"] == "session opened"]
    assert all(x["detail"]["source"].startswith("net4-") for x in opened
               if x["detail"]["source"])
    assert all(x["authid"].endswith("...") for x in lines if x["authid"])
