"""Scale: 100,000 active authids and ~10,000 live proxy sessions on one node (issue #16).

Runs the node's daemons as a user runs them (`lthn-node run` under supervisord: busd,
paymentd, authd, sessiond, firewalld; no wallet answers) beside a real haproxy 2.6 with
the node's contract (lthn/haproxy/contract.py: the authid map, both stick tables, the
admitted-request rules) on a plain-HTTP front end. In one run it prints:

1. authd: loading 100,000 authids made ACTIVE in the ledger into haproxy; then what one
   periodic look costs: a full resync (`show map` of 100,000 entries against the ledger,
   what authd did every 3 s before #16: the baseline) vs a catch-up of the ledger's
   changes (none, and 100), timed in this process on the same haproxy and ledger; and
   the real authd's CPU over an idle half minute;
2. sessiond: its tick (from its own log, `tick: ... ms`) with no live session (the
   baseline), then with LIVE live sessions for long enough to include a minute-of-use
   boundary (when every session's minute ends together); and how long haproxy alone
   takes to answer a whole `show table` (what a tick read every time before #16), and
   sessiond's full garbage collections between ticks;
3. a cut at that scale: 50 live authids with a CONNECT tunnel each run dry together;
   time from their credit revoked to their tunnels closed;
4. RSS of every daemon (and together) with an empty ledger, at 100,000 authids, and at
   100,000 authids with the live sessions.

The live sessions are requests haproxy holds in its back end's queue (one server slot,
taken): a live stream per authid, tracked like any admitted request, costing haproxy one
fd each. A proxied tunnel costs two, and haproxy needs 2 x maxconn fds: this machine's
limit of 20,000 caps maxconn below 10,000, so LIVE defaults to 9,900, 50 of them real
CONNECT tunnels (to a loopback echo origin) for the cut: haproxy 2.6 does not end a
stream waiting in a queue when `shutdown session` asks (measured).

    python bench/bench_scale.py [--authids N] [--live N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

from benchlib import in_work_dir, percentile, wait  # noqa: E402

from lthn import config as config_mod  # noqa: E402
from lthn.haproxy import contract  # noqa: E402
from lthn.haproxy.firewall_files import write_run_files  # noqa: E402
from lthn.haproxy.runtime import HaproxyAdmin  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from services.authd.map_sync import MapSync  # noqa: E402
from services.proxy import haproxy_config  # noqa: E402
from services.sessiond.collector import FULL_EVERY  # noqa: E402
from services.sessiond.proxy_sessions import WHOLE_READ_EVERY  # noqa: E402
from tests.fixtures.mini_proxy import ConnectOrigin, closed_by_peer, open_tunnel  # noqa: E402
from tests.fixtures.node import Node, default_config, merge  # noqa: E402

DAEMONS = ("busd", "paymentd", "authd", "sessiond", "firewalld")
SERVICE = "1A"
TICK = re.compile(r"tick: (\d+) live, (\d+) looked at, (\d+) charged, (\d+) deactivated; "
                  r"([\d.]+) ms \(haproxy ([\d.]+), ledger ([\d.]+); cpu ([\d.]+)\)")
GC = re.compile(r"garbage collected: \d+ unreachable, ([\d.]+) ms")
GOAL_TICK_MS = 50.0
GOAL_RSS_MB = 200.0

HAPROXY_CONFIG = """\
global
    stats socket {admin} mode 600 level admin
    maxconn {maxconn}
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout queue 1h
frontend proxy
    bind 127.0.0.1:{port}
{sources}
{connection}
    http-request set-var(txn.authid) req.hdr(X-LTHN-PaymentID),upper
    http-request return status 403 if !{{ var(txn.authid),map({map}) -m found }}
{admitted}
    use_backend echo if METH_CONNECT
    default_backend held
backend echo
    server echo 127.0.0.1:{echo_port}
backend held
    # one slot, taken by the first request and never answered: the rest wait in the queue
    server held 127.0.0.1:{held_port} maxconn 1
backend {table}
    {stick}
backend {stream_table}
    {stream_stick}
backend {source_table}
    {source_stick}
"""


class QueueHaproxy:
    """haproxy with the node's contract; every admitted request stays live in the queue."""

    def __init__(self, config: config_mod.Config, maxconn: int, echo_port: int) -> None:
        self.config = config
        self.held = socket.socket()
        self.held.bind(("127.0.0.1", 0))
        self.held.listen(16)        # accepted by the kernel, never answered
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        run = config.state / "run"
        run.mkdir(parents=True, exist_ok=True)
        self.map_path = contract.authid_map_path(config)
        self.map_path.write_text("")
        self.cfg_path = run / "scale-haproxy.cfg"
        self.cfg_path.write_text(HAPROXY_CONFIG.format(
            admin=contract.admin_socket_path(config), maxconn=maxconn, port=self.port,
            map=self.map_path, held_port=self.held.getsockname()[1], echo_port=echo_port,
            connection="\n".join(f"    {line}" for line in contract.connection_rules()),
            admitted="\n".join(f"    {line}" for line in contract.admitted_rules()),
            table=contract.STICK_TABLE, stick=contract.stick_table_definition(config),
            stream_table=contract.STREAM_TABLE,
            stream_stick=contract.stream_table_definition(),
            # the node's source rules (#17): firewalld keeps their ACLs and bans map
            sources="\n".join(haproxy_config.source_rules(config)),
            source_table=contract.SOURCE_TABLE,
            source_stick=contract.source_table_definition(config)))
        write_run_files(config, {}, {})
        self.admin = HaproxyAdmin(contract.admin_socket_path(config), timeout=30)
        self.proc: subprocess.Popen | None = None

    def start(self) -> QueueHaproxy:
        out = open(self.config.state / "scale-haproxy.out", "ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg_path)],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        wait(lambda: "Pid:" in self.admin.command("show info"), 15, "haproxy's admin socket")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.held.close()


# --- measuring ---

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_rss(node: Node) -> dict[str, float]:
    return {name: rss_mb(node.pid(name)) for name in DAEMONS}


def ticks_since(node: Node, offset: int) -> list[tuple[float, ...]]:
    """(live, looked, charged, ms, haproxy ms, ledger ms, cpu ms) of each tick logged
    after character `offset` of sessiond's log."""
    out = []
    for m in TICK.finditer(node.log_text("sessiond")[offset:]):
        out.append((int(m[1]), int(m[2]), int(m[3]), float(m[5]), float(m[6]), float(m[7]),
                    float(m[8])))
    return out


def timed(action: Callable[[], object], runs: int = 3) -> float:
    """Median seconds of `runs` calls."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def activate(ledger: Ledger, authids: list[str], credit: int) -> None:
    """ACTIVE in the ledger, as paymentd leaves a paid authid (no bus message: authd must
    find them in the ledger's changes)."""
    with ledger.transaction() as tx:
        for authid in authids:
            tx.ensure_authid(authid, SERVICE)
            tx.credit(authid, credit)
            tx.activate(authid)   # PENDING -> ACTIVE


def open_live(port: int, authids: list[str]) -> list[socket.socket]:
    socks = []
    for authid in authids:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n"
                     f"X-LTHN-PaymentID: {authid}\r\n\r\n".encode())
        socks.append(sock)
    return socks


def summary(ticks: list[tuple[float, ...]], what: str) -> str:
    ms = [t[3] for t in ticks]
    if not ms:
        return f"{what}: no tick logged"
    cpu = [t[6] for t in ticks]
    return (f"{what}: {len(ms)} ticks, p50 {percentile(ms, 50):.1f} ms, p99 "
            f"{percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms (haproxy part p50 "
            f"{percentile([t[4] for t in ticks], 50):.1f} ms); sessiond CPU per tick p50 "
            f"{percentile(cpu, 50):.1f} ms, p99 {percentile(cpu, 99):.1f} ms; looked at "
            f"per tick p50 {percentile([t[1] for t in ticks], 50):.0f}, max "
            f"{max(t[1] for t in ticks)}")


def run(work: Path, authids_total: int, live_total: int) -> None:
    state = work / "state"
    settings = merge(default_config(state), {
        # connected billing at 0.001/min; credit for days: nothing runs dry by itself
        "services": [{"id": SERVICE, "name": "Proxy", "type": "proxy", "cost": "0.001",
                      "firstPrePaidMinutes": 0, "subsequentPrePaidMinutes": 0}],
        "log_level": "debug",
    })
    config_path = work / "node.yaml"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    config = config_mod.load(config_path)
    echo = ConnectOrigin()
    haproxy = QueueHaproxy(config, maxconn=live_total + 80, echo_port=echo.port).start()
    node = Node(work, settings, DAEMONS)
    ledger: Ledger | None = None
    socks: list[socket.socket] = []
    try:
        node.start(timeout=60)
        ledger = Ledger.open(config.ledger_path)
        rss_empty = daemon_rss(node)
        credit = config.atomic(config.services[0].cost) * 60 * 24 * 30

        print(f"1. authd: {authids_total:,} authids made ACTIVE in the ledger", flush=True)
        authids = [f"{SERVICE}{i:014X}" for i in range(authids_total)]
        t0 = time.perf_counter()
        activate(ledger, authids, credit)
        t1 = time.perf_counter()
        wait(lambda: "found=yes" in haproxy.admin.command(
            f"get map {haproxy.map_path} {authids[-1]}"), 120, "authd admitting them")
        t2 = time.perf_counter()
        map_text = haproxy.admin.command(f"show map {haproxy.map_path}")
        in_map = map_text.count("\n")
        map_mb = len(map_text) / 1e6
        time.sleep(5)                      # sessiond and authd digest the load
        rss_loaded = daemon_rss(node)
        authd_pid = node.pid("authd")
        cpu0, c0 = cpu_seconds(authd_pid), time.monotonic()
        time.sleep(30)
        authd_idle = (cpu_seconds(authd_pid) - cpu0) / (time.monotonic() - c0)
        sync = MapSync(haproxy.admin, haproxy.map_path, ledger,
                       config.state / "run" / "authd-map.lock")
        full = timed(lambda: sync.resync("bench"))
        none = timed(sync.catch_up)
        changed, catch_ups = authids[-100:], []
        for turn in range(4):
            with ledger.transaction() as tx:   # ACTIVE -> DEPLETED, and back the next turn
                for authid in changed:
                    if turn % 2:
                        tx.activate(authid)
                    else:
                        tx.deactivate(authid)
            catch_ups.append(timed(sync.catch_up, runs=1))
        catch_100 = statistics.median(catch_ups)
        sync.close()

        print("2. sessiond: ticks with no live session", flush=True)
        offset = len(node.log_text("sessiond"))
        time.sleep(15)
        idle_ticks = ticks_since(node, offset)
        print(f"   opening {live_total:,} live sessions", flush=True)
        t3 = time.perf_counter()
        dry = authids[:50]
        tunnels = [open_tunnel(haproxy.port, authid) for authid in dry]
        socks = tunnels + open_live(haproxy.port, authids[50:live_total])
        wait(lambda: len(ledger.open_sessions("proxy")) >= live_total - 1, 120,
             "sessiond opening a session for each")   # the first holds the server slot
        t4 = time.perf_counter()
        offset = len(node.log_text("sessiond"))
        print("   75 s of ticks with them live (a minute of use ends in there)", flush=True)
        time.sleep(75)
        live_ticks = ticks_since(node, offset)
        collections = [float(m[1]) for m in GC.finditer(node.log_text("sessiond")[offset:])]
        floor = timed(lambda: haproxy.admin.command(f"show table {contract.STICK_TABLE}"))
        rss_live = daemon_rss(node)

        print("3. a cut: 50 live authids run dry together", flush=True)
        rows = {a: ledger.authid(a) for a in dry}
        with ledger.transaction() as tx:      # a revocation leaves ~1 s of credit each
            for authid, row in rows.items():
                second = config.atomic(config.services[0].cost) // 60
                tx.revoke(authid, row.credit - row.spent - second - 1, from_pending=False)
        t5 = time.perf_counter()
        for tunnel in tunnels:
            if not closed_by_peer(tunnel, timeout=max(0.1, t5 + 30 - time.perf_counter())):
                raise SystemExit("bench: a dry authid's tunnel was not cut within 30 s")
        t6 = time.perf_counter()
        deactivated_at = ledger.conn.execute(
            "SELECT MIN(at), MAX(at) FROM audit WHERE event = 'deactivated'").fetchone()

        print()
        print(f"authd, {authids_total:,} authids ({map_mb:.1f} MB of `show map`):")
        print(f"  ledger rows made ACTIVE in {t1 - t0:.1f} s; all {in_map:,} in haproxy's map "
              f"{t2 - t1:.1f} s later (authd: a full resync, {authids_total:,} changes are "
              "over its catch-up limit)")
        print(f"  one periodic look: full resync {full * 1e3:8.1f} ms (the baseline, every "
              f"3 s before #16)")
        print(f"                     catch-up, no change {none * 1e3:8.2f} ms   ratio "
              f"{none / full:.4f}")
        print(f"                     catch-up, 100 changes {catch_100 * 1e3:6.1f} ms   ratio "
              f"{catch_100 / full:.4f}")
        print(f"  real authd idle at {authids_total:,}: {authd_idle * 100:.2f} % of a CPU "
              f"(a full resync every 3 s would be {full / 3 * 100:.1f} %)")
        print()
        print(f"sessiond, tick every {config.sessions.tick:g} s:")
        print("  " + summary(idle_ticks, "no live session (baseline)"))
        print("  " + summary(live_ticks, f"{live_total:,} live"))
        if idle_ticks and live_ticks:
            live_p99 = percentile([t[3] for t in live_ticks], 99)
            cpu_p99 = percentile([t[6] for t in live_ticks], 99)
            print(f"  p99 with them live / goal {GOAL_TICK_MS:.0f} ms: wall "
                  f"{live_p99 / GOAL_TICK_MS:.2f}, sessiond's own CPU "
                  f"{cpu_p99 / GOAL_TICK_MS:.2f} (wall time waits for the CPUs when the "
                  "load average is above 2)")
        if collections:
            print(f"  between ticks, {len(collections)} full garbage collections (one in "
                  f"{FULL_EVERY} ticks, services/sessiond/collector.py): p50 "
                  f"{percentile(collections, 50):.1f} ms, max {max(collections):.1f} ms")
        print(f"  haproxy alone answers a whole `show table` ({live_total:,} entries, what "
              f"a tick read before #16 and now every {WHOLE_READ_EVERY:g} s) in "
              f"{floor * 1e3:.1f} ms")
        print(f"  {live_total:,} sessions opened in sessiond's ledger {t4 - t3:.1f} s after "
              "the first request")
        print()
        print(f"a cut of 50 authids at once: the last deactivated "
              f"{deactivated_at[1] - deactivated_at[0]:.2f} s after the first; every stream "
              f"closed {t6 - t5:.2f} s after their credit was revoked")
        print()
        print(f"RSS, MB          {'empty':>8} {f'{authids_total:,}':>9} "
              f"{f'+{live_total:,} live':>12}")
        for name in DAEMONS:
            print(f"  {name:14} {rss_empty[name]:8.1f} {rss_loaded[name]:9.1f} "
                  f"{rss_live[name]:12.1f}")
        totals = [sum(r.values()) for r in (rss_empty, rss_loaded, rss_live)]
        print(f"  {'together':14} {totals[0]:8.1f} {totals[1]:9.1f} {totals[2]:12.1f}"
              f"   (goal < {GOAL_RSS_MB:.0f}: ratio {totals[2] / GOAL_RSS_MB:.2f})")
    except BaseException:
        print(node.diagnostics())
        raise
    finally:
        for sock in socks:
            sock.close()
        if ledger is not None:
            ledger.close()
        node.stop()
        haproxy.stop()
        echo.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authids", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=9_900)
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args()
    return in_work_dir("bench-scale-", args.keep,
                       lambda work: run(work, args.authids, args.live))


if __name__ == "__main__":
    raise SystemExit(main())
