"""Proxy path: throughput, request rate and latency through the node vs. squid directly.

Starts a node's real proxy path on this machine (bench/proxy_rig.py): `lthn-haproxy` and
`lthn-squid` from a node config (haproxy.cfg and squid.conf rendered by the node's own
code), a fast origin on 127.0.0.1 (an `allow_destinations` exception) that serves from
memory, and authids made active in a real ledger and written into haproxy's runtime map
by authd's MapSync. In one run it measures:

1. download throughput of one large body: client -TLS-> haproxy -> squid -> origin (the
   node) vs. client -> squid -> origin (baseline), MB/s and ratio, runs alternated;
2. request rate of small GETs (114-byte body) from several keep-alive clients (one
   process and one connection each) for a fixed time: node vs. squid, req/s and ratio;
3. latency of sequential small GETs on one keep-alive TLS connection through the node,
   p50/p99, with 100, 10,000 and 100,000 authids in haproxy's map (each request names a
   random active authid); baseline: the 100-authid figure. Then the map is shrunk back
   to 100 and measured again, which shows how much of a difference is drift.

    python bench/bench_proxy.py [--quick] [--keep]

Every client is Python (TLS 1.2, no SNI, the node's CA, like Lethean's client), so the
figures are the whole machine's: client, haproxy, squid and origin share its CPUs.
Expected: the node below squid alone (TLS plus a second proxy hop); latency flat in the
map size (haproxy's maps are trees).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from benchlib import percentile
from proxy_rig import ProxyRig, Route, read_response, request_bytes

MB = 1_000_000


@dataclass(frozen=True)
class Plan:
    download_bytes: int
    download_runs: int          # per route, alternated
    clients: int
    rate_seconds: float
    rate_rounds: int            # per route, alternated
    latency_requests: int
    map_sizes: tuple[int, ...]


FULL = Plan(200 * MB, 3, 8, 5.0, 3, 10_000, (100, 10_000, 100_000))
QUICK = Plan(50 * MB, 1, 8, 2.0, 1, 1000, (100, 10_000, 100_000))


def requests_for(rig: ProxyRig, route: Route, count: int = 256) -> list[bytes]:
    """Ready-made small GETs; through the node each names a random active authid."""
    url = rig.origin.url("/small")
    if not route.via_node:
        return [request_bytes(url, None)]
    return [request_bytes(url, random.choice(rig.active)) for _ in range(count)]


# --- 1. throughput ---

def download(rig: ProxyRig, route: Route, size: int) -> float:
    """MB/s of one GET of `size` bytes, from the request sent to its last byte read."""
    authid = rig.active[0] if route.via_node else None
    buf = bytearray(1 << 20)
    with route.connect() as sock:
        t0 = time.perf_counter()
        sock.sendall(request_bytes(rig.origin.url(f"/big/{size}"), authid))
        status = read_response(sock, buf)
        elapsed = time.perf_counter() - t0
    if status != 200:
        raise SystemExit(f"bench: download via {route.name} answered {status}")
    return size / MB / elapsed


# --- 2. request rate ---

def _rate_worker(route: Route, requests: list[bytes], start_at: float, seconds: float,
                 out: Connection) -> None:
    sock = route.connect()
    buf = bytearray(1 << 16)
    done = 0
    time.sleep(max(0.0, start_at - time.monotonic()))
    end = start_at + seconds
    try:
        while time.monotonic() < end:
            sock.sendall(requests[done % len(requests)])
            if read_response(sock, buf) != 200:
                raise RuntimeError(f"non-200 answer via {route.name}")
            done += 1
        out.send((done, None))
    except Exception as exc:   # reported to the parent, which stops the bench
        out.send((done, repr(exc)))
    finally:
        sock.close()


def request_rate(rig: ProxyRig, route: Route, clients: int, seconds: float) -> float:
    """req/s of `clients` keep-alive clients (forked processes) over `seconds`."""
    ctx = multiprocessing.get_context("fork")
    requests = requests_for(rig, route)
    start_at = time.monotonic() + 0.5 + 0.05 * clients   # every client connected by then
    pipes, procs = [], []
    try:
        for _ in range(clients):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_rate_worker,
                               args=(route, requests, start_at, seconds, send), daemon=True)
            proc.start()
            pipes.append(receive)
            procs.append(proc)
        total = 0
        for receive in pipes:
            if not receive.poll(seconds + 30):
                raise SystemExit(f"bench: a rate client via {route.name} never reported")
            done, error = receive.recv()
            if error:
                raise SystemExit(f"bench: rate client via {route.name}: {error}")
            total += done
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
    return total / seconds


# --- 3. latency ---

def latencies(rig: ProxyRig, route: Route, count: int, warmup: int = 200) -> list[float]:
    """Seconds per GET, sequential on one keep-alive connection."""
    requests = requests_for(rig, route, count=1000)
    buf = bytearray(1 << 16)
    out = []
    with route.connect() as sock:
        for i in range(warmup + count):
            t0 = time.perf_counter()
            sock.sendall(requests[i % len(requests)])
            status = read_response(sock, buf)
            if status != 200:
                raise SystemExit(f"bench: GET via {route.name} answered {status}")
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    return out


# --- the run ---

class CpuMeter:
    """CPU seconds haproxy, squid and the origin spend per route, summed over runs."""

    def __init__(self, rig: ProxyRig) -> None:
        self.rig = rig
        self.used: dict[str, dict[str, float]] = {"node": {}, "squid": {}}

    def measure(self, route: Route, work: Callable[[], float]) -> float:
        before = self.rig.cpu_seconds()
        result = work()
        after = self.rig.cpu_seconds()
        for name, value in after.items():
            used = self.used[route.name]
            used[name] = used.get(name, 0.0) + value - before[name]
        return result

    def per(self, route: str, units: float, scale: float) -> str:
        used = self.used[route]
        return " / ".join(f"{used[name] / units * scale:7.1f}"
                          for name in ("haproxy", "squid", "origin"))


def run(rig: ProxyRig, plan: Plan) -> None:
    node, squid = rig.node, rig.squid
    loads = [(plan.map_sizes[0], *rig.activate(plan.map_sizes[0]))]
    unpaid = rig.get(node, rig.origin.url("/small"), "1A" + "F" * 14)
    if unpaid != 403 or rig.get(node, rig.origin.url("/small"), rig.active[0]) != 200:
        raise SystemExit("bench: the node does not admit paid / refuse unpaid authids")

    print(f"1. download of {plan.download_bytes / MB:.0f} MB, {plan.download_runs} run(s) "
          "per route, alternated", flush=True)
    download_cpu = CpuMeter(rig)
    speeds: dict[str, list[float]] = {"node": [], "squid": []}
    for _ in range(plan.download_runs):
        for route in (node, squid):
            speeds[route.name].append(download_cpu.measure(
                route, lambda r=route: download(rig, r, plan.download_bytes)))

    print(f"2. request rate, {plan.clients} keep-alive clients, {plan.rate_rounds} x "
          f"{plan.rate_seconds:.0f} s per route, alternated", flush=True)
    rate_cpu = CpuMeter(rig)
    rates: dict[str, list[float]] = {"node": [], "squid": []}
    for _ in range(plan.rate_rounds):
        for route in (node, squid):
            rates[route.name].append(rate_cpu.measure(
                route, lambda r=route: request_rate(rig, r, plan.clients, plan.rate_seconds)))

    print(f"3. latency, {plan.latency_requests} sequential GETs per map size", flush=True)
    lat: list[tuple[str, list[float]]] = [("squid directly (no map)",
                                           latencies(rig, squid, plan.latency_requests))]
    for i, size in enumerate(plan.map_sizes):
        if i:
            loads.append((size, *rig.activate(size)))
        lat.append((f"node, {size:,} authids", latencies(rig, node, plan.latency_requests)))
    rig.shrink(plan.map_sizes[0])
    lat.append((f"node, {plan.map_sizes[0]:,} authids again",
                latencies(rig, node, plan.latency_requests)))

    med = statistics.median
    print()
    print(f"{'':34} {'node':>10} {'squid':>10} {'node/squid':>11}")
    n, s = med(speeds["node"]), med(speeds["squid"])
    print(f"{'download, MB/s (median)':34} {n:10.1f} {s:10.1f} {n / s:11.2f}")
    n, s = med(rates["node"]), med(rates["squid"])
    print(f"{'small GETs, req/s (median)':34} {n:10.0f} {s:10.0f} {n / s:11.2f}")
    print(f"  runs: download node {fmt(speeds['node'])}, squid {fmt(speeds['squid'])}; "
          f"rate node {fmt(rates['node'], 0)}, squid {fmt(rates['squid'], 0)}")
    gigabytes = plan.download_bytes * plan.download_runs / 1e9
    print("  CPU, haproxy / squid / origin:")
    print(f"    download, CPU s per GB:      node {download_cpu.per('node', gigabytes, 1)}"
          f"   squid {download_cpu.per('squid', gigabytes, 1)}")
    gets = {route: sum(rates[route]) * plan.rate_seconds for route in ("node", "squid")}
    print(f"    small GETs, CPU us per GET:  node {rate_cpu.per('node', gets['node'], 1e6)}"
          f"   squid {rate_cpu.per('squid', gets['squid'], 1e6)}")
    print()
    base = lat[1][1]
    b50, b99 = percentile(base, 50), percentile(base, 99)
    print(f"{'latency, ms':34} {'p50':>10} {'p99':>10} {'p50 ratio':>11} {'p99 ratio':>10}")
    for label, values in lat:
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{label:34} {p50 * 1e3:10.3f} {p99 * 1e3:10.3f} {p50 / b50:11.2f} "
              f"{p99 / b99:10.2f}")
    print(f"  (ratios against the first 'node, {plan.map_sizes[0]:,} authids' row)")
    print()
    print("map loads (ledger rows ACTIVE, then authd's MapSync.resync into haproxy):")
    for size, ledger_s, resync_s in loads:
        print(f"  to {size:>7,} authids: ledger {ledger_s:6.2f} s, resync {resync_s:6.2f} s")


def fmt(values: list[float], digits: int = 1) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 1 minute)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    started = time.monotonic()
    print(f"work dir {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          "starting haproxy, squid, origin ...", flush=True)
    rig = ProxyRig(work)
    try:
        rig.start()
        run(rig, plan)
    except BaseException:
        for name in ("haproxy", "squid"):
            print(f"--- {name} log ---\n{rig.log_tail(name)}")
        raise
    finally:
        rig.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f} (other work on this machine skews every figure)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
