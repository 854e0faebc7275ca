"""What a reload costs the clients of a busy node (issue #15).

A client makes GET after GET through a whole node under supervisord (bench/proxy_rig.py),
a new TLS connection each, for a stretch of time: first with nothing happening (the
baseline), then while lthn-haproxy is sent SIGHUP every second (a master-worker reload
each), then while lthn-squid is (a squid reconfigure each). Printed per phase: requests,
failed requests, latency p50/p99/max, and the ratio of each to the baseline.

    .venv/bin/python bench/bench_reload.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from benchlib import percentile
from proxy_rig import NodeRig, read_response, request_bytes

from lthn.haproxy.runtime import HaproxyAdmin, HaproxyUnavailable


def run_phase(rig: NodeRig, seconds: float, signal_to: str | None) -> dict:
    authid = rig.active[0]
    url = rig.origin.url("/small")
    route = rig.route
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    signals = 0

    def ask() -> None:
        buf = bytearray(1 << 16)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                with route.connect() as sock:
                    sock.sendall(request_bytes(url, authid))
                    status = read_response(sock, buf)
                if status != 200:
                    failures.append(str(status))
            except OSError as exc:
                failures.append(repr(exc))
            latencies.append(time.perf_counter() - started)

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)   # the bench's own rhythm: one reload a second
        if signal_to is not None and time.monotonic() < deadline - 0.5:
            os.kill(rig.node.pid(signal_to), signal.SIGHUP)   # lthn-haproxy / lthn-squid
            signals += 1
    stop.set()
    thread.join()
    return {"requests": len(latencies), "failures": failures, "signals": signals,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies)}


def worker_pid(rig: NodeRig) -> str:
    try:
        info = HaproxyAdmin(rig.config.haproxy_admin_socket).command("show info")
    except HaproxyUnavailable:
        return "?"
    return info.split("Pid: ", 1)[1].split()[0] if "Pid: " in info else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lthn-bench-reload-") as work:
        rig = NodeRig(Path(work), authids=1).start()
        try:
            run_phase(rig, 2.0, None)   # warm up: first TLS handshakes, squid's first fetch
            base = run_phase(rig, args.seconds, None)
            before = worker_pid(rig)
            haproxy = run_phase(rig, args.seconds, "haproxy")
            after = worker_pid(rig)
            squid = run_phase(rig, args.seconds, "squid")
        finally:
            rig.stop()
    print(f"each phase {args.seconds:.0f} s of back-to-back GETs, a new TLS connection each")
    print(f"{'phase':28} {'requests':>8} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  ratio p50/p99/max to baseline")
    for name, phase in (("baseline (no reload)", base),
                        (f"haproxy reload x{haproxy['signals']}", haproxy),
                        (f"squid reconfigure x{squid['signals']}", squid)):
        ratio = "/".join(f"{phase[k] / base[k]:.2f}" for k in ("p50", "p99", "max"))
        print(f"{name:28} {phase['requests']:8d} {len(phase['failures']):6d} "
              f"{phase['p50'] * 1000:8.2f} {phase['p99'] * 1000:8.2f} "
              f"{phase['max'] * 1000:8.2f}  {ratio}")
    print(f"haproxy worker pid {before} -> {after} across the reloads")
    for name, phase in (("haproxy", haproxy), ("squid", squid)):
        if phase["failures"]:
            print(f"{name} phase failures (first 5): {phase['failures'][:5]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
