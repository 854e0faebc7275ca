"""Proxy path: the whole node vs the bare haproxy -> squid chain vs squid alone (issue #16).

Runs the node as a user runs it (bench/proxy_rig.py: `lthn-node run`, every program under
supervisord, AUTHIDS authids active in the ledger and haproxy's map, sessiond charging the
ones the clients use) and, beside it, bare haproxy chains into squid: the same haproxy
binary and certificate, TLS 1.2, a plain `mode http` front end, nothing else, in variants
(haproxy threads, ciphers, squid's SMP workers). Every client is Python, TLS 1.2 without
SNI like Lethean's, keep-alive, one authid per connection; the origin serves from memory.

The machine is shared and its load comes in bursts, so routes are interleaved finely
rather than run one after another: every client holds a connection to every route and
all switch route together every SLICE seconds (round robin), so a burst of other work
hits every route alike; the latency client alternates route request by request; the
downloads alternate route by route. Measured:

1. small GETs (114-byte body) from CLIENTS keep-alive clients, req/s per route;
2. latency of sequential small GETs, p50/p99 per route, the route changing request by
   request (each chain met with the caches the seven others left: its working set, the
   rules, map and tables, counts); then the node and the bare chains alone, in runs of
   RUN GETs through one chain, as a client's requests through the one proxy it uses
   (the first of each run, the switch, not counted);
3. download of one large body, MB/s (median of DOWNLOADS per route);
4. new TLS connections per second (one GET each), full handshakes vs resumed sessions.

Printed: the node against the bare chain (goal >= 0.95 on rate, MB/s and p99 latency),
every route against squid alone, the CPU each part spends per GET (the node's daemons
included), and the noise: each figure over the run's first, middle and last thirds.
haproxy -> squid over a unix socket cannot be tried: squid listens on TCP only.

    python bench/bench_proxy.py [--quick] [--core] [--keep]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from benchlib import keep_or_remove, percentile, print_total
from proxy_rig import (
    BareHaproxy,
    NodeRig,
    Route,
    SmpSquid,
    cpu_seconds,
    latencies,
    read_response,
    request_bytes,
    settle,
)

MB = 1_000_000
GOAL = 0.95
RUN = 50        # GETs in a row through one chain, in the second latency measurement
THIRDS = 3


@dataclass(frozen=True)
class Plan:
    authids: int
    clients: int
    slice: float                # seconds on one route before every client switches
    rate_seconds: float         # the whole interleaved run (all routes)
    latency_requests: int       # per route
    download_bytes: int
    downloads: int              # per route
    handshake_seconds: float    # the whole interleaved run (node and bare, full/resumed)


FULL = Plan(100_000, 8, 0.5, 120.0, 6_000, 100 * MB, 6, 40.0)
QUICK = Plan(100_000, 8, 0.5, 30.0, 1_500, 30 * MB, 3, 12.0)


# --- interleaved clients ---

def _sliced_worker(routes: list[Route], requests: list[bytes], start_at: float,
                   slice_s: float, slices: int, fresh: bool, out: Connection) -> None:
    """Requests in the route of the current slice (round robin); counts per slice.
    `fresh`: a new TLS connection per GET, even slices full handshakes and odd slices
    resumed sessions."""
    buf = bytearray(1 << 16)
    counts = [0] * slices
    try:
        socks = [None if fresh else r.connect() for r in routes]
        sessions: list = [None] * len(routes)
        time.sleep(max(0.0, start_at - time.monotonic()))
        while True:
            k = int((time.monotonic() - start_at) / slice_s)
            if k >= slices:
                break
            i = k % len(routes)
            sock = socks[i]
            if fresh:
                resume = (k // len(routes)) % 2 == 1
                sock = routes[i].connect(session=sessions[i] if resume else None)
            assert sock is not None
            sock.sendall(requests[i])
            if read_response(sock, buf) != 200:
                raise RuntimeError(f"non-200 answer via {routes[i].name}")
            if fresh:
                sessions[i] = getattr(sock, "session", None) or sessions[i]
                sock.close()
            counts[k] += 1
        out.send((counts, None))
    except Exception as exc:   # reported to the parent, which stops the bench
        out.send((counts, repr(exc)))


def sliced(rig: NodeRig, routes: list[Route], clients: int, slice_s: float, seconds: float,
           fresh: bool = False) -> list[int]:
    """Requests done in each slice, summed over `clients` client processes."""
    slices = int(seconds / slice_s) // len(routes) * len(routes)
    ctx = multiprocessing.get_context("fork")
    start_at = time.monotonic() + 1.0 + 0.3 * clients * (0 if fresh else len(routes)) / 8
    pipes, procs = [], []
    try:
        for _ in range(clients):
            authid = rig.authid()
            requests = [request_bytes(rig.origin.url("/small"), authid, close=fresh)
                        for _ in routes]
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_sliced_worker, daemon=True, args=(
                routes, requests, start_at, slice_s, slices, fresh, send))
            proc.start()
            pipes.append(receive)
            procs.append(proc)
        totals = [0] * slices
        for receive in pipes:
            if not receive.poll(seconds + 60):
                raise SystemExit("bench: a client never reported")
            counts, error = receive.recv()
            if error:
                raise SystemExit(f"bench: a client failed: {error}")
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
    return totals


def per_route(totals: list[int], n_routes: int, slice_s: float, part: int = 0,
              parts: int = 1) -> list[float]:
    """Requests per second of each route, over the `part`-th of `parts` of the run."""
    cycles = len(totals) // n_routes
    lo, hi = cycles * part // parts, cycles * (part + 1) // parts
    return [sum(totals[c * n_routes + i] for c in range(lo, hi)) / ((hi - lo) * slice_s)
            for i in range(n_routes)]


def download(rig: NodeRig, route: Route, size: int) -> float:
    """MB/s of one GET of `size` bytes, from the request sent to its last byte read."""
    buf = bytearray(1 << 20)
    with route.connect() as sock:
        t0 = time.perf_counter()
        sock.sendall(request_bytes(rig.origin.url(f"/big/{size}"), rig.authid()))
        status = read_response(sock, buf)
        elapsed = time.perf_counter() - t0
    if status != 200:
        raise SystemExit(f"bench: download via {route.name} answered {status}")
    return size / MB / elapsed


# --- CPU ---

def cpu_of(rig: NodeRig, routes: list[Route]) -> dict[str, float]:
    """CPU seconds so far of every haproxy and squid the routes use, and the daemons."""
    pids = {pid for r in routes for part in r.pids.values() for pid in part}
    out = {f"pid {pid}": cpu_seconds(pid) for pid in pids}
    out["daemons"] = sum(cpu_seconds(rig.node.pid(d))
                         for d in ("busd", "paymentd", "authd", "sessiond", "firewalld"))
    return out


def cpu_line(route: Route, used: dict[str, float], units: float, scale: float) -> str:
    """haproxy / squid CPU of this route per unit (scaled)."""
    parts = []
    for part in ("haproxy", "squid"):
        seconds = sum(used.get(f"pid {pid}", 0.0) for pid in route.pids.get(part, ()))
        parts.append(f"{seconds / units * scale:6.1f}" if route.pids.get(part) else "     -")
    return " / ".join(parts)


# --- the run ---

def warm_at(warm: list[list[float]], p: float, t: int) -> dict[int, float]:
    """The runs-of-RUN latency percentile, ms, by route index (node 0, bare 1, bare 1t t),
    for the table's columns."""
    return {0: percentile(warm[0], p) * 1e3, 1: percentile(warm[1], p) * 1e3,
            t: percentile(warm[2], p) * 1e3}


def run(rig: NodeRig, routes: list[Route], plan: Plan) -> None:
    node, bare = routes[0], routes[1]
    squid = next(r for r in routes if r.name == "squid alone")
    n = len(routes)

    print(f"1. small GETs: {plan.clients} clients, route switched every {plan.slice} s, "
          f"{plan.rate_seconds:.0f} s", flush=True)
    before = cpu_of(rig, routes)
    totals = sliced(rig, routes, plan.clients, plan.slice, plan.rate_seconds)
    after = cpu_of(rig, routes)
    rate = per_route(totals, n, plan.slice)
    thirds = [per_route(totals, n, plan.slice, p, THIRDS) for p in range(THIRDS)]
    # CPU per GET: the interleaved run shares its CPU time between routes, so a process
    # serving one route only (a haproxy) is divided by that route's GETs; squid and the
    # daemons serve several, and are divided by all the GETs they saw
    gets = [r * plan.rate_seconds / n for r in rate]

    t = next(i for i, r in enumerate(routes) if r.name == "bare, nbthread 1")
    print(f"2. latency: {plan.latency_requests} sequential GETs per route, alternating "
          f"request by request; then node, bare and bare 1t in runs of {RUN} GETs",
          flush=True)
    settle()
    lat = latencies(rig, routes, plan.latency_requests)
    settle()
    warm = latencies(rig, [node, bare, routes[t]], plan.latency_requests, block=RUN)

    print(f"3. downloads of {plan.download_bytes / MB:.0f} MB, {plan.downloads} per route, "
          "alternating", flush=True)
    speeds: list[list[float]] = [[] for _ in routes]
    for _ in range(plan.downloads):
        for i, route in enumerate(routes):
            speeds[i].append(download(rig, route, plan.download_bytes))

    print("4. new TLS connections, full and resumed, node and bare alternating", flush=True)
    settle()
    tls = [node, bare]
    fresh = sliced(rig, tls, 4, plan.slice, plan.handshake_seconds, fresh=True)
    # slices alternate route; cycles alternate full (even) and resumed (odd)
    cycles = len(fresh) // 2
    hs = {(route, kind): sum(fresh[c * 2 + i] for c in range(cycles) if c % 2 == k)
          / (plan.slice * len([c for c in range(cycles) if c % 2 == k]))
          for i, route in enumerate(("node", "bare")) for k, kind in enumerate(("full",
                                                                                "resumed"))}

    p50 = [percentile(v, 50) for v in lat]
    p99 = [percentile(v, 99) for v in lat]
    mbs = [statistics.median(v) for v in speeds]
    print()
    print(f"The node ({plan.authids:,} authids active, every program running) against the "
          f"bare chain; goal >= {GOAL}.")
    print("The node's haproxy runs one thread on this machine if it has 2 CPUs or fewer "
          "(haproxy_config._threads): 'bare' is haproxy's default, 'bare 1t' one thread.")
    print(f"{'':30} {'node':>8} {'bare':>8} {'node/bare':>9} {'bare 1t':>8} "
          f"{'node/1t':>8}   node/bare by third")
    third_ratios = " ".join(f"{th[0] / th[1]:.2f}" for th in thirds)
    rows = [("small GETs, req/s", rate, lambda a, b: a / b, "9.0f", third_ratios),
            ("download, MB/s (median)", mbs, lambda a, b: a / b, "9.1f", ""),
            ("latency p99, ms (ratio b/n)", [v * 1e3 for v in p99], lambda a, b: b / a,
             "9.3f", ""),
            ("latency p50, ms (ratio b/n)", [v * 1e3 for v in p50], lambda a, b: b / a,
             "9.3f", ""),
            (f"  in runs of {RUN}: p99", warm_at(warm, 99, t), lambda a, b: b / a, "9.3f",
             ""),
            (f"  in runs of {RUN}: p50", warm_at(warm, 50, t), lambda a, b: b / a, "9.3f",
             "")]
    for label, values, ratio, form, extra in rows:
        print(f"{label:30}{values[0]:{form}}{values[1]:{form}} "
              f"{ratio(values[0], values[1]):9.2f}{values[t]:{form}} "
              f"{ratio(values[0], values[t]):8.2f}   {extra}")
    for kind in ("full", "resumed"):
        a, b = hs[("node", kind)], hs[("bare", kind)]
        print(f"{f'new TLS conns/s, {kind}':30}{a:9.0f}{b:9.0f} {a / b:9.2f}")
    print(f"  downloads, MB/s: node {fmt(speeds[0])}; bare {fmt(speeds[1])}")
    print()
    s = routes.index(squid)
    print("Every route against squid alone (ratios: rate, MB/s, squid p99 / p99):")
    print(f"{'':24} {'req/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'rate':>6} {'MB/s':>6} {'p99':>6}   rate by third")
    for i, route in enumerate(routes):
        by_third = " ".join(f"{t[i]:.0f}" for t in thirds)
        print(f"{route.name:24} {rate[i]:8.0f} {mbs[i]:8.1f} {p50[i] * 1e3:8.3f} "
              f"{p99[i] * 1e3:8.3f} {rate[i] / rate[s]:6.2f} {mbs[i] / mbs[s]:6.2f} "
              f"{p99[s] / p99[i]:6.2f}   {by_third}")
    print()
    used = {k: after[k] - before[k] for k in after}
    shared_gets = sum(gets)
    print("CPU per small GET in the interleaved run, us: haproxy / squid (a squid serving "
          "several routes is divided by all their GETs)")
    for i, route in enumerate(routes):
        mine = {k: v for k, v in used.items()}
        squid_pids = route.pids.get("squid", ())
        sharing = sum(gets[j] for j, r in enumerate(routes)
                      if set(r.pids.get("squid", ())) & set(squid_pids)) or 1
        hap = sum(mine.get(f"pid {p}", 0.0) for p in route.pids.get("haproxy", ()))
        sq = sum(mine.get(f"pid {p}", 0.0) for p in squid_pids)
        print(f"  {route.name:24} {hap / gets[i] * 1e6 if hap else 0:6.1f} / "
              f"{sq / sharing * 1e6:6.1f}")
    print(f"  the node's daemons (busd, paymentd, authd, sessiond, firewalld), over every "
          f"GET of the run: {used['daemons'] / shared_gets * 1e6:.1f} us "
          f"({used['daemons']:.2f} s in {plan.rate_seconds:.0f} s)")


def fmt(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (~2 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    parser.add_argument("--core", action="store_true",
                        help="only the node, the bare chain (default and one thread) and "
                        "squid alone: four routes woken in turn instead of eight")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    started = time.monotonic()
    print(f"work dir {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"starting the node with {plan.authids:,} active authids ...", flush=True)
    rig = NodeRig(work, plan.authids)
    variants: list[BareHaproxy] = []
    squids: list[SmpSquid] = []
    try:
        rig.start()
        variants = [BareHaproxy(rig, "bare"),
                    BareHaproxy(rig, "bare, nbthread 1", nbthread=1)]
        if not args.core:
            squids = [SmpSquid(rig, workers=2).start()]
            variants += [BareHaproxy(rig, "bare, AES128-GCM",
                                     ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"),
                         BareHaproxy(rig, "bare, CHACHA20",
                                     ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"),
                         BareHaproxy(rig, "bare, squid 2 workers", squid=squids[0])]
        for variant in variants:
            variant.start()
        routes = [rig.route, *[v.route for v in variants], rig.squid,
                  *[s.route for s in squids]]
        run(rig, routes, plan)
    except BaseException:
        print(rig.node.diagnostics())
        raise
    finally:
        for variant in variants:
            variant.stop()
        for smp in squids:
            smp.stop()
        rig.stop()
        keep_or_remove(work, args.keep)
    print_total(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
