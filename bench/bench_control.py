"""Control request round trip: lthnctl-side `daemon.status` to a real lthn-firewalld
process and back, as lthnctl asks (a probe of the socket, a new DEALER socket, strict
encode, the daemon loop's poll, the handler, strict decode),
against a baseline measured in the same run: the same bytes through a bare ZeroMQ
DEALER -> ROUTER echo in a thread of this program (what the transport costs at least).

    python bench/bench_control.py [--requests 2000]

Prints p50/p99 of both and the ratio. Expected: well under a millisecond either way;
the daemon adds its loop turn and msgpack, far below the one-second budget of lthnctl.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import percentile, wait  # noqa: E402

from lthn import control  # noqa: E402
from lthn.node.supervision import tool  # noqa: E402
from lthn.requests import DaemonStatus  # noqa: E402


def echo_baseline(ctx: zmq.Context, directory: Path, n: int) -> list[float]:
    address = f"ipc://{directory / 'echo.sock'}"
    server = ctx.socket(zmq.ROUTER)
    server.bind(address)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if server.poll(50):
                server.send_multipart(server.recv_multipart())
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ctx.socket(zmq.DEALER)
    client.connect(address)
    body = msgpack.packb({"req": "daemon.status", "v": 1, "sender": "bench", "user": "u",
                          "data": {}})
    times = []
    for _ in range(n):
        began = time.perf_counter()
        client.send_multipart([b"", body])
        client.recv_multipart()
        times.append(time.perf_counter() - began)
    stop.set()
    thread.join()
    client.close(0)
    server.close(0)
    return times


def daemon_round_trips(ctx: zmq.Context, state: Path, n: int) -> list[float]:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        control.ask(ctx, state, "firewalld", DaemonStatus(), timeout=5)
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lthn-bench-ctl-") as tmp:
        directory = Path(tmp)
        state = directory / "state"
        config = directory / "node.yaml"
        config.write_text(f'provider: {{id: "{"a" * 64}"}}\nstate_dir: "{state}"\n'
                          "log_level: warning\n")
        ctx = zmq.Context()
        busd = subprocess.Popen([tool("lthn-busd"), "-c", str(config)])
        daemon = subprocess.Popen([tool("lthn-firewalld"), "-c", str(config)])
        try:
            wait(lambda: control.listening(control.endpoint_path(state, "firewalld")) is None,
                 timeout=30, what="firewalld's control socket")
            daemon_round_trips(ctx, state, 50)                      # warm up
            baseline = echo_baseline(ctx, directory, args.requests)
            measured = daemon_round_trips(ctx, state, args.requests)
        finally:
            for proc in (daemon, busd):
                proc.terminate()
                proc.wait(timeout=10)
            ctx.destroy(linger=0)
    for name, times in (("bare zmq echo (baseline)", baseline),
                        ("daemon.status to firewalld", measured)):
        print(f"{name:28} p50 {percentile(times, 50) * 1e3:7.3f} ms   "
              f"p99 {percentile(times, 99) * 1e3:7.3f} ms   ({len(times)} requests)")
    print(f"ratio (p50): {percentile(measured, 50) / percentile(baseline, 50):.1f}x the "
          "bare transport")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
