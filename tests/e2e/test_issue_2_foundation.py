"""Issue #2, the foundation, end to end: the whole suite under the real supervisord.

supervisord starts every program and `supervisorctl status` shows them RUNNING;
`supervisorctl stop/start authd` works; a daemon killed with SIGKILL is back RUNNING
within a few seconds with the ledger intact; authd scaled to two processes admits an
authid once and reports a refusal once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lthn import config as config_mod
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.node.programs import NAMES as PROGRAMS
from lthn.node.supervision import tool
from tests.fixtures.common import wait_for
from tests.fixtures.node import Node, alive, credit_and_activate

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("busd", "paymentd", "authd", "sessiond", "firewalld")
AUTHID = "1A00112233445566"


def activate(node: Node, authids: list[str], amount: int = 2 * 10**10) -> None:
    """Credit and activate authids through lthn.access, as paymentd does."""
    credit_and_activate(config_mod.load(node.config_path), authids, amount)


def ledger_snapshot(node: Node) -> tuple:
    conn = sqlite3.connect(str(node.state / "ledger.sqlite"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return (conn.execute("SELECT * FROM authids ORDER BY authid").fetchall(),
                conn.execute("SELECT * FROM payments ORDER BY txid").fetchall(),
                conn.execute("SELECT * FROM spends ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM audit ORDER BY id").fetchall())
    finally:
        conn.close()


def holds_for(check, seconds: float, what: str) -> None:
    """Observe that `check()` stays true for `seconds` (a property over time, not a wait)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), what
        time.sleep(0.05)


def test_issue_2_whole_suite_runs_under_supervisord(run_node):
    """Every program of supervisord.conf RUNNING; private state dir; a log per program."""
    node = run_node()
    result = node.ctl("status")
    assert result.returncode == 0, result.stdout
    states = node.status()
    assert states == {name: "RUNNING" for name in
                      ["busd", "paymentd", "authd:authd_0", "sessiond", "firewalld", "watchd",
                       "squid", "haproxy"]}
    for directory in (node.state, node.state / "run", node.state / "log", node.state / "tls"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_ISSOCK((node.state / "run" / "supervisor.sock").stat().st_mode)
    node.wait_log("busd", "bus: forwarding")
    for daemon in ("paymentd", "authd", "sessiond", "firewalld", "watchd"):
        node.wait_log(daemon, f"{daemon}: ready")
    # haproxy answers on its admin socket: its worker is the child of the master that
    # lthn-haproxy, the supervised program, runs as its own child (issue #15)
    info = HaproxyAdmin(node.state / "run" / "haproxy-admin.sock").command("show info")
    worker = int(info.split("Pid: ", 1)[1].split()[0])
    master = parent_pid(worker)
    assert parent_pid(master) == node.pid("haproxy")


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def test_issue_2_left_out_programs_stay_stopped(run_node):
    node = run_node(programs=("busd", "firewalld"))
    states = node.status()
    assert states["busd"] == states["firewalld"] == "RUNNING"
    assert {states[p] for p in ("paymentd", "sessiond", "squid", "haproxy")} == {"STOPPED"}


def test_issue_2_stop_and_start_authd(run_node):
    node = run_node()
    before = node.pid("authd")
    result = node.ctl("stop", "authd")
    assert result.returncode == 0 and "authd:authd_0: stopped" in result.stdout, result.stdout
    assert node.status()["authd:authd_0"] == "STOPPED"
    assert not alive(before)
    # SIGTERM went through the daemon's own shutdown path
    node.wait_log("authd", "authd: stopped")
    result = node.ctl("start", "authd")
    assert result.returncode == 0 and "authd:authd_0: started" in result.stdout, result.stdout
    assert node.status()["authd:authd_0"] == "RUNNING"
    after = node.pid("authd")
    assert after and after != before
    log = node.wait_log("authd", "authd: ready")
    assert log.count("authd: ready") == 2
    # the rest of the suite did not notice
    assert all(state == "RUNNING" for state in node.status().values())


@pytest.mark.parametrize("daemon", DAEMONS)
def test_issue_2_sigkilled_daemon_is_back_with_its_ledger_intact(run_node, daemon):
    node = run_node({"firewall": {"refusal_threshold": 1}})
    activate(node, [AUTHID])
    before = ledger_snapshot(node)
    old = node.pid(daemon)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: node.pid(daemon) not in (0, old)
             and node.status().get(node._process(daemon)) == "RUNNING",
             timeout=10, what=f"{daemon} RUNNING again")
    assert time.monotonic() - killed_at < 10
    assert not alive(old)
    if daemon != "busd":
        node.wait_log(daemon, f"{daemon}: ready")
        assert node.log_text(daemon).count(f"{daemon}: ready") == 2
    assert ledger_snapshot(node) == before
    assert all(state == "RUNNING" for state in node.status().values())
    # the bus works again across the restart: a refusal reaches firewalld
    stop = node.dir / "pub.stop"
    pub = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.bus_publisher", "--config",
         str(node.config_path), "--source", "127.0.0.5", "--stop-file", str(stop)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL)
    try:
        node.wait_log("firewalld", "source 127.0.0.5: 1 refusals")
    finally:
        stop.touch()
        assert pub.wait(timeout=10) == 0


def map_counts(node: Node) -> Counter[str]:
    from lthn.haproxy.contract import authid_map_path
    from services.authd.map_sync import parse_show_map
    config = config_mod.load(node.config_path)
    admin = HaproxyAdmin(config.haproxy_admin_socket)
    return parse_show_map(admin.command(f"show map {authid_map_path(config)}"))


def curl_through(node: Node, authid: str, url: str) -> str:
    """One request through the node's TLS proxy; returns haproxy's X-LTHN-Status."""
    port = node.config["proxy"]["port"]
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "10",
         "--proxy", f"https://127.0.0.1:{port}", "--proxy-insecure",
         "-H", f"X-LTHN-PaymentID: {authid}", url],
        capture_output=True, text=True, timeout=20, check=False)
    for line in result.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "x-lthn-status":
            return value.strip()
    return ""


def two_authd_node(run_node) -> Node:
    node = run_node(programs=("busd", "authd", "firewalld", "haproxy", "squid"),
                    authd_procs=2)
    states = node.status()
    assert states["authd:authd_0"] == states["authd:authd_1"] == "RUNNING"
    assert node.pid("authd_0") != node.pid("authd_1")
    for name in ("authd_0", "authd_1"):
        node.wait_log(name, "authd: ready")
    return node


def test_issue_2_two_authd_processes_admit_an_authid_once(run_node):
    """numprocs 2: 20 activations at once give 20 map entries, one each."""
    node = two_authd_node(run_node)
    authids = [f"1A{n:014X}" for n in range(20)]
    activate(node, authids)
    wait_for(lambda: all(map_counts(node)[a] >= 1 for a in authids), timeout=10,
             what="20 authids in haproxy's map")
    holds_for(lambda: all(map_counts(node)[a] == 1 for a in authids), 2.0,
              "an authid has more than one map entry")


def test_issue_2_two_authd_processes_publish_a_refusal_once(run_node, tmp_path):
    """numprocs 2: 10 refused requests give 10 `access.refused` events, one each."""
    node = two_authd_node(run_node)
    tap_out = tmp_path / "tap.jsonl"
    with open(tap_out, "wb") as out:
        tap = subprocess.Popen([tool("lthn-tap"), "-c", str(node.config_path), "--json",
                                "access.refused"], stdout=out, stderr=subprocess.DEVNULL)
    try:
        # the tap's subscription must reach busd before the refusals: wait for a probe
        probe = node.dir / "probe.stop"
        pub = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.bus_publisher", "--config",
             str(node.config_path), "--source", "127.0.0.99", "--stop-file", str(probe)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL)
        wait_for(lambda: "127.0.0.99" in tap_out.read_text(), timeout=10, what="tap ready")
        probe.touch()
        assert pub.wait(timeout=10) == 0

        unpaid = [f"1AFFFF{n:010X}" for n in range(10)]
        for n, authid in enumerate(unpaid):
            assert curl_through(node, authid, f"http://127.0.0.1:9/refused-{n}") \
                == "NO_PAYMENT"

        def refusals() -> Counter[str]:
            seen: Counter[str] = Counter()
            for line in tap_out.read_text().splitlines():
                data = json.loads(line)["data"]
                if data["source"] != "127.0.0.99":
                    seen[data["authid"]] += 1
            return seen

        wait_for(lambda: set(refusals()) == set(unpaid), timeout=10,
                 what="10 refusals on the bus")
        holds_for(lambda: max(refusals().values()) == 1, 1.0, "a refusal published twice")
    finally:
        tap.send_signal(signal.SIGINT)
        tap.wait(timeout=10)


def test_issue_2_firewalld_reports_a_source_with_many_refusals(run_node):
    """Real refusals (haproxy -> authd -> bus) reach firewalld, which reports the source
    once it reaches the threshold (one line, not one per refusal); NO_PAYMENT bans nobody
    (issue #17)."""
    node = run_node({"firewall": {"refusal_threshold": 5, "refusal_window": 60}},
                    programs=("busd", "authd", "firewalld", "haproxy", "squid"))
    node.wait_log("firewalld", "firewalld: ready")
    for n in range(4):
        assert curl_through(node, f"1AEEEE{n:010X}", "http://127.0.0.1:9/") == "NO_PAYMENT"
    node.wait_log("authd", "refused 127.0.0.1: NO_PAYMENT")
    assert "refusals in" not in node.log_text("firewalld")
    for n in range(4, 8):
        assert curl_through(node, f"1AEEEE{n:010X}", "http://127.0.0.1:9/") == "NO_PAYMENT"
    log = node.wait_log("firewalld", "source 127.0.0.1: 5 refusals in 60 s (threshold 5)")
    assert log.count("refusals in 60 s") == 1     # reported once, not once per refusal
    assert "banned" not in log


def test_issue_2_bad_authd_procs_is_refused(tmp_path, node_config):
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(node_config()))
    result = subprocess.run([tool("lthn-node"), "run", "-c", str(config)], capture_output=True,
                            text=True, env=dict(os.environ, LTHN_AUTHD_PROCS="two"),
                            timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        'Error: LTHN_AUTHD_PROCS: must be a whole number from 1 to 64 (got "two")'


def test_issue_2_supervisord_conf_names_every_program():
    text = (ROOT / "supervisord.conf").read_text() + (ROOT / "supervisord-vpn.conf").read_text()
    for program in PROGRAMS:
        assert f"[program:{program}]" in text
        assert f"autostart=%(ENV_LTHN_START_{program.upper()})s" in text


def processes_of(directory: Path) -> list[int]:
    """Live pids whose command line or LTHN_CONFIG names `directory` (the demo's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        config = [v for v in environ if v.startswith(b"LTHN_CONFIG=")]
        if (str(directory) in cmdline or (config and str(directory).encode() in config[0])) \
                and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def printed_command(output: str, marker: str) -> list[str]:
    """The command the demo printed whose line holds `marker` (continuations joined)."""
    import shlex
    text = output.replace("\\\n", " ")
    for line in text.splitlines():
        if marker in line:
            return shlex.split(line)
    raise AssertionError(f"the demo printed no `{marker}` command:\n{output}")


def test_issue_2_demo_prints_how_to_pay_and_use_the_proxy_and_both_work(tmp_path):
    """`lthn-node demo`: regtest chain + whole node; the printed pay command pays, the
    printed curl command then gets the demo origin's page; Ctrl-C stops everything."""
    from lthn.demo.demo import ORIGIN_PAGE
    directory = tmp_path / "demo"
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        demo = subprocess.Popen([tool("lthn-node"), "demo", "--dir", str(directory)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        output = wait_for(lambda: demo.poll() is None and "3. Look inside" in
                          out_path.read_text() and out_path.read_text(), timeout=180,
                          what="the demo's instructions")
        pay = printed_command(output, " demo-pay ")
        curl = printed_command(output, "curl --proxy ")
        refused = subprocess.run([*curl, "-s", "-i"], capture_output=True, text=True,
                                 timeout=30, check=False)
        assert refused.stdout.startswith("HTTP/1.1 403 ")
        assert "x-lthn-status: no_payment" in refused.stdout.lower()
        assert pay[0] in ("lthn-node", tool("lthn-node"))
        paid = subprocess.run([tool("lthn-node"), *pay[1:]], capture_output=True, text=True,
                              timeout=120, check=False)
        assert paid.returncode == 0, paid.stderr
        assert paid.stdout.startswith(f"paid 0.05 XMR for authid {pay[-2]}: txid ")
        wait_for(lambda: subprocess.run([*curl, "-s"], capture_output=True, timeout=30,
                                        check=False).stdout == ORIGIN_PAGE,
                 timeout=15, what="the origin's page through the paid proxy")
        second = subprocess.run([tool("lthn-node"), "demo", "--dir", str(directory)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 2
        assert second.stderr.strip() == f"Error: a demo is still running in {directory}; " \
            "stop it (Ctrl-C) or choose another --dir"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=120) == 0
        assert "Stopping the node and the regtest chain" in out_path.read_text()
        assert processes_of(directory) == []
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)   # the demo's own clean stop, then force
            try:
                demo.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        for pid in processes_of(directory):
            os.kill(pid, signal.SIGKILL)
