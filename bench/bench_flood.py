"""A flood from 1,000 source addresses against a real node, with paying clients (issue #17).

The node (busd, authd, firewalld, haproxy, squid under the real supervisord, bans
enforced by haproxy; nftables off unless --nftables, so haproxy's path is what is
measured) runs with its
default ban rules: 20 offences of one kind in 60 s ban a source. Then:

1. quiet phase: 5 paying clients (127.0.3.1-5, each its own TLS connection per request,
   as Lethean's client) fetch a small page from a local origin; their latency is the
   baseline;
2. flood phase: the same paying clients go on while flood workers send requests with a
   malformed authid from 1,000 addresses (127.1.x.y), each address on its own keep-alive
   TLS connection, as fast as the machine lets them, for `--seconds` or `--max-requests`
   (whichever comes first: the bench stops by itself).

Printed: flood req/s; refusals sent vs counted by haproxy (per-source counters) and vs
`access.refused` events on the bus; for each banned address the time from its 20th
offence answered to its first BANNED answer (p50/p99: goal < 200 ms at p99); paying
clients' p50/p99 in both phases and the ratio (goal p99 <= 3x); CPU seconds per program;
the machine's load and the CPU other processes used meanwhile (this machine has 2 cores
shared with other work, so the figures carry that noise).

    .venv/bin/python bench/bench_flood.py [--seconds 15] [--workers 2] [--sources 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

import zmq  # noqa: E402
from benchlib import keep_or_remove, percentile, wait  # noqa: E402
from proxy_rig import Origin, cpu_seconds, process_tree  # noqa: E402

from lthn import config as config_mod  # noqa: E402
from lthn.bus import Subscriber  # noqa: E402
from lthn.haproxy.runtime import HaproxyAdmin  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from lthn.refusals import RefusalKind  # noqa: E402
from services.firewalld.offences import parse_show_table  # noqa: E402
from tests.fixtures.node import Node, credit_and_activate, default_config, merge  # noqa: E402
from tests.fixtures.proxy import ProxyClient  # noqa: E402

PROGRAMS = ("busd", "authd", "firewalld", "haproxy", "squid")
PAYING = [f"127.0.3.{i}" for i in range(1, 6)]
THRESHOLD = 20
HANDSHAKES_AT_ONCE = 32   # per flood worker


def flood_sources(n: int) -> list[str]:
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


# --- the flood: one process per worker, asyncio, one keep-alive TLS connection per source ---

async def _one_source(source: str, port: int, ctx: ssl.SSLContext, request: bytes,
                      stop_at: float, budget: list[int], out: dict,
                      handshakes: asyncio.Semaphore) -> None:
    stats = {"sent": 0, "BAD_AUTHID": 0, "BANNED": 0, "other": 0, "errors": 0,
             "nth": None, "banned": None}
    out[source] = stats
    reader = writer = None
    while time.monotonic() < stop_at and budget[0] > 0:
        try:
            if writer is None:
                # a few handshakes at a time: 1,000 at once starve everything else
                async with handshakes:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, local_addr=(source, 0),
                        server_hostname=""), max(0.05, stop_at - time.monotonic()))
            budget[0] -= 1
            writer.write(request)
            stats["sent"] += 1
            # bounded: a source whose packets nftables drops never hears back, and the
            # flood must stop on time all the same
            left = max(0.05, stop_at - time.monotonic())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), left)
            length, code, close = 0, "", False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-lthn-status":
                    code = value.strip().decode()
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if length:
                await reader.readexactly(length)
            now = time.time()     # wall clock: compared with the ledger's ban times
            if code == "BAD_AUTHID":
                stats["BAD_AUTHID"] += 1
                if stats["BAD_AUTHID"] == THRESHOLD:
                    stats["nth"] = now
            elif code == "BANNED":
                stats["BANNED"] += 1
                if stats["banned"] is None:
                    stats["banned"] = now
            else:
                stats["other"] += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ssl.SSLError):   # TimeoutError is an OSError
            stats["errors"] += 1
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _flood_worker(sources: list[str], port: int, ca: str, seconds: float, max_requests: int,
                  start_at: float, conn) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    request = (b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
               b"X-LTHN-PaymentID: not-an-authid\r\n\r\n")
    out: dict = {}

    async def run() -> None:
        while time.time() < start_at:
            await asyncio.sleep(0.005)
        stop_at = time.monotonic() + seconds
        budget = [max_requests]
        handshakes = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        await asyncio.gather(*(_one_source(s, port, ctx, request, stop_at, budget, out,
                                           handshakes) for s in sources))
    began = time.monotonic()
    asyncio.run(run())
    # monotonic clocks are per machine: the parent compares them as they are
    used = os.times()
    conn.send({"stats": out, "began": began, "ended": time.monotonic(),
               "cpu": used.user + used.system})
    conn.close()


def _count_events(endpoint: str, stop, conn) -> None:
    ctx = zmq.Context()
    sub = Subscriber(ctx, endpoint, ["access.refused"])
    seen = 0
    while not stop.is_set():
        if sub.socket.poll(100):
            seen += len(sub.drain())
    sub.close()
    ctx.destroy(linger=0)
    conn.send(seen)


# --- the paying clients ---

class Paying:
    def __init__(self, node: Node, config: config_mod.Config, authids: list[str], url: str
                 ) -> None:
        ca = config.state / "tls" / "ca.pem"
        self.clients = [ProxyClient(config.proxy.bind, config.proxy.port, ca, source=s)
                        for s in PAYING]
        self.authids = authids
        self.url = url
        self.phase = "quiet"
        self.latencies: dict[str, list[float]] = {"quiet": [], "flood": []}
        self.failures: dict[str, int] = {"quiet": 0, "flood": 0}
        self.codes: dict[str, int] = {}       # why requests failed
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(len(self.clients))]

    def _loop(self, i: int) -> None:
        while not self.stop.is_set():
            phase = self.phase
            start = time.monotonic()
            try:
                answer = self.clients[i].request("GET", self.url, authid=self.authids[i])
                ok = answer.status == 200
                if not ok:
                    self.codes[answer.lthn_status or str(answer.status)] = \
                        self.codes.get(answer.lthn_status or str(answer.status), 0) + 1
            except OSError as exc:
                ok = False
                self.codes[type(exc).__name__] = self.codes.get(type(exc).__name__, 0) + 1
            if ok:
                self.latencies[phase].append((time.monotonic() - start) * 1000)
            else:
                self.failures[phase] += 1
            time.sleep(0.1)    # a browser-like pace, not a second flood

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


# --- CPU per program ---

def tree_cpu(trees: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """CPU seconds per program, its children included (haproxy's master and worker run
    under lthn-haproxy, squid under lthn-squid: #15)."""
    return {p: sum(cpu_seconds(pid) for pid in tree) for p, tree in trees.items()}


def machine_busy() -> float:
    """CPU seconds every process of the machine used so far (all cores)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    ticks = [int(p) for p in parts]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="flood length")
    parser.add_argument("--quiet", type=float, default=6.0, help="quiet phase length")
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="flood processes")
    parser.add_argument("--max-requests", type=int, default=2_000_000,
                        help="flood requests at most (per worker)")
    parser.add_argument("--nftables", action="store_true",
                        help="also drop banned sources' packets (the node's own nftables "
                        "table, removed at the end); default: haproxy only")
    parser.add_argument("--keep", action="store_true", help="keep the node's directory")
    args = parser.parse_args()
    if not 1 <= args.sources <= 2500:
        raise SystemExit("bench: --sources must be 1..2500 (127.1.0.1-127.1.9.250)")

    # a SIGTERM (timeout, Ctrl-C's cousin) still stops the node and its nftables table
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = Path(tempfile.mkdtemp(prefix="lthn-bench-flood-"))
    origin = Origin().start()
    authids = [f"1A{i:014X}" for i in range(1, 6)]
    config_dict = merge(default_config(work / "state"), {
        "proxy": {"allow_destinations": [f"127.0.0.1:{origin.port}"]},
        "firewall": {"nftables": "on" if args.nftables else "off",
                     "refusal_threshold": THRESHOLD,
                     "refusal_window": 60, "ban_time": 600},
        "log_level": "info",
    })
    node = Node(work, config_dict, PROGRAMS)
    try:
        node.start(timeout=60)
        config = config_mod.load(node.config_path)
        credit_and_activate(config, authids, 10**13, actor="bench")
        admin = HaproxyAdmin(config.haproxy_admin_socket)
        url = origin.url("/small")
        probe = ProxyClient(config.proxy.bind, config.proxy.port,
                            config.state / "tls" / "ca.pem", source=PAYING[0])
        wait(lambda: probe.request("GET", url, authid=authids[0]).status == 200, 20,
             "the paying authids admitted")
        # counted in a process of its own: thousands of events a second would hold this
        # process's GIL and slow the paying clients' threads, which are what is measured
        stop_counting = multiprocessing.get_context("fork").Event()
        count_pipe, count_child = multiprocessing.Pipe(duplex=False)
        counter = multiprocessing.get_context("fork").Process(
            target=_count_events, args=(config.subscribe_endpoint, stop_counting, count_child),
            daemon=True)
        counter.start()
        pids = {p: node.pid(p) for p in ("haproxy", "authd", "firewalld", "busd", "squid")}
        paying = Paying(node, config, authids, url)
        paying.start()
        load_before = os.getloadavg()
        time.sleep(args.quiet)

        # --- the flood ---
        sources = flood_sources(args.sources)
        chunks = [sources[i::args.workers] for i in range(args.workers)]
        start_at = time.time() + 1.0
        pipes, procs = [], []
        for chunk in chunks:
            parent, child = multiprocessing.Pipe(duplex=False)
            proc = multiprocessing.get_context("fork").Process(
                target=_flood_worker, args=(chunk, config.proxy.port,
                                            str(config.state / "tls" / "ca.pem"),
                                            args.seconds, args.max_requests, start_at, child))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        while time.time() < start_at:
            time.sleep(0.005)
        paying.phase = "flood"
        trees = {p: process_tree(pid) for p, pid in pids.items()}
        cpu0 = tree_cpu(trees)
        busy0, t0 = machine_busy(), time.monotonic()
        results = [pipe.recv() for pipe in pipes]      # each worker stops by itself
        flood_wall = time.monotonic() - t0
        for proc in procs:
            proc.join(10)
        cpu1 = tree_cpu(trees)
        busy1 = machine_busy()
        paying.phase = "after"
        paying.latencies["after"] = []
        paying.failures["after"] = 0
        load_after = os.getloadavg()
        worker_cpu = sum(r.get("cpu", 0.0) for r in results)
        time.sleep(1.0)                                # late events reach the bus
        stop_counting.set()
        events = count_pipe.recv()
        counter.join(5)
        paying.finish()

        # --- what haproxy counted ---
        table = parse_show_table(admin.command("show table lthn_sources"))
        counted_bad = sum(c.total.get(RefusalKind.BAD_AUTHID, 0) for c in table
                          if c.source.startswith("127.1."))
        counted_refused = sum(c.total.get(RefusalKind.REFUSED_SOURCE, 0) for c in table
                              if c.source.startswith("127.1."))
        stats = {s: v for r in results for s, v in r["stats"].items()}
        sent = sum(v["sent"] for v in stats.values())
        bad = sum(v["BAD_AUTHID"] for v in stats.values())
        banned_answers = sum(v["BANNED"] for v in stats.values())
        other = sum(v["other"] for v in stats.values())
        errors = sum(v["errors"] for v in stats.values())
        delays = [(v["banned"] - v["nth"]) * 1000 for v in stats.values()
                  if v["nth"] is not None and v["banned"] is not None]
        never = sum(1 for v in stats.values() if v["nth"] is not None and v["banned"] is None)
        ledger = Ledger.open(config.ledger_path)
        rows = {b.ip: b for b in ledger.bans() if b.ip.startswith("127.1.")}
        ledger.close()
        bans = len(rows)
        # haproxy holds a ban before its ledger row commits, so the row's time is an upper
        # bound of "effective at haproxy"; the client's first BANNED answer is later still
        # (it waits for that source's next request)
        effective = [(rows[s].created - v["nth"]) * 1000 for s, v in stats.items()
                     if v["nth"] is not None and s in rows]
        unbanned = sum(1 for s, v in stats.items() if v["nth"] is not None and s not in rows)

        quiet, flood = paying.latencies["quiet"], paying.latencies["flood"]
        print(f"flood: {args.sources} sources, {args.workers} worker processes, "
              f"{flood_wall:.1f} s")
        print(f"  sent {sent} requests = {sent / flood_wall:.0f} req/s; answered BAD_AUTHID "
              f"{bad}, BANNED {banned_answers}, other {other}; client errors {errors}")
        same = (counted_bad, counted_refused) == (bad, banned_answers)
        print(f"  haproxy counted BAD_AUTHID {counted_bad} (answered {bad}), BANNED "
              f"{counted_refused} (answered {banned_answers}): "
              f"{'no loss' if same else 'DIFFERENT'}")
        print(f"  access.refused events on the bus: {events} of {bad} logged refusals "
              f"({100 * events / bad if bad else 0:.0f} %; BANNED is not logged per request)")
        print(f"  sources banned: {bans} of {args.sources} in the ledger "
              f"({unbanned} reached {THRESHOLD} offences without a ban row); "
              f"{len(delays)} answered BANNED after their {THRESHOLD}th offence, {never} "
              "sent nothing after it")
        past = [v["BAD_AUTHID"] - THRESHOLD for v in stats.values()
                if v["BAD_AUTHID"] > THRESHOLD]
        print(f"  offences answered past the {THRESHOLD}th (haproxy refuses the next one "
              f"itself): {sum(past)} in all, from {len(past)} sources, at most "
              f"{max(past, default=0)}")
        if effective:
            early = sum(1 for d in effective if d < 0)
            clamped = [max(0.0, d) for d in effective]
            print(f"  {THRESHOLD}th offence answered -> firewalld's ban row (map entry "
                  f"before it): p50 {percentile(clamped, 50):.0f} ms  p99 "
                  f"{percentile(clamped, 99):.0f} ms  max {max(clamped):.0f} ms  (goal p99 "
                  f"< 200 ms; {early} bans were in force before the starved client had read "
                  "its 20th answer, counted as 0)")
        if delays:
            pace = sent / flood_wall / max(1, args.sources)
            print(f"  {THRESHOLD}th offence answered -> that source's first BANNED answer: "
                  f"p50 {percentile(delays, 50):.0f} ms  p99 {percentile(delays, 99):.0f} ms "
                  f"(includes the wait for its next request: {pace:.1f} requests per "
                  "source per s)")
        if quiet and flood:
            q50, q99 = percentile(quiet, 50), percentile(quiet, 99)
            f50, f99 = percentile(flood, 50), percentile(flood, 99)
            print(f"paying clients ({len(PAYING)}): quiet p50 {q50:.1f} ms p99 {q99:.1f} ms "
                  f"({len(quiet)} requests, {paying.failures['quiet']} failed)")
            print(f"  during the flood: p50 {f50:.1f} ms p99 {f99:.1f} ms ({len(flood)} "
                  f"requests, {paying.failures['flood']} failed)")
            print(f"  ratio flood/quiet: p50 {f50 / q50:.1f}x  p99 {f99 / q99:.1f}x  "
                  "(goal p99 <= 3x)" + (f"; failures: {paying.codes}" if paying.codes else ""))
        used = {p: cpu1[p] - cpu0[p] for p in pids}
        ours = sum(used.values())
        print("CPU seconds during the flood: " + ", ".join(f"{p} {v:.1f}"
                                                         for p, v in used.items())
              + f"; flood workers ~{max(0.0, worker_cpu):.1f}")
        print(f"machine: 2 cores, {busy1 - busy0:.1f} CPU s busy in {flood_wall:.1f} s "
              f"(node {ours:.1f}); load average {load_before[0]:.1f} before, "
              f"{load_after[0]:.1f} after (other work on the machine adds noise)")
        print(f"firewalld log: {sum(1 for _ in open(node.log_path('firewalld')))} lines; "
              f"authd log {node.log_path('authd').stat().st_size // 1024} KiB")
        return 0
    finally:
        node.stop()
        origin.stop()
        keep_or_remove(work, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
