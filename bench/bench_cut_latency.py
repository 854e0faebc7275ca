"""Cut latency: from an authid's credit exhausted (its deactivation in the ledger) to its
open CONNECT tunnel closed by the node, as the client sees it.

Runs a real haproxy 2.6 (the design's stick table and request-log contract, see
tests/fixtures/mini_proxy.py), a loopback CONNECT origin, lthn-busd and lthn-sessiond.
N authids each get a tiny credit (staggered so they run dry over several ticks) and hold
one tunnel; the time of each deactivation is sessiond's audit line (the start of the
transaction that committed it), the close time is when the client's recv sees EOF/reset.
Baseline in the same run: N tunnels cut by one bare `show sess` + `shutdown session`
from this program (what sessiond's cut costs at the least). Prints p50/p99 and the ratio.

    python bench/bench_cut_latency.py [--tunnels 40] [--tick 0.25] [--log-level debug --keep]

Expected: a few ms above the baseline (the tick's transaction commit, one `show sess`
and a `shutdown session` per stream); the 2 s limit of issue #4 is far away.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

from benchlib import percentile, wait  # noqa: E402

from lthn import access  # noqa: E402
from lthn import config as config_mod  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from lthn.ports import free_port_pair  # noqa: E402
from services.sessiond.haproxy_answers import parse_sessions  # noqa: E402
from tests.fixtures.common import kill_group  # noqa: E402
from tests.fixtures.mini_proxy import ConnectOrigin, MiniHaproxy, open_tunnel  # noqa: E402

BUSD = "import sys; from services.busd.main import main; sys.exit(main(sys.argv[1:]))"
PER_SECOND = 1000            # cost 0.0006 coin/min at 10^8 atomic units per coin


class CloseWatcher:
    """Records, per socket, the wall-clock time the peer closed it."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.closed: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with self.lock:
            self.selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        while not self.stopping:
            with self.lock:
                events = self.selector.select(timeout=0.005) if self.selector.get_map() \
                    else []
            for key, _ in events:
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError) as exc:
                    data = b"" if isinstance(exc, ConnectionResetError) else None
                if data == b"":
                    now = time.time()
                    with self.lock:
                        self.selector.unregister(sock)
                        self.closed[sock] = now
            if not events:
                time.sleep(0.001)

    def start(self) -> CloseWatcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=2)


def baseline(haproxy: MiniHaproxy, n: int) -> list[float]:
    """Bare cost: find the stream in `show sess`, `shutdown session`, see the close."""
    authid = "1B00000000000000"
    haproxy.add(authid, "1B")
    out = []
    for _ in range(n):
        sock = open_tunnel(haproxy.port, authid)
        client = "{}:{}".format(*sock.getsockname())
        sock.settimeout(5)
        t0 = time.time()
        streams = parse_sessions(haproxy.admin.command("show sess"))
        ptr = next(s.ptr for s in streams if s.src == client)
        haproxy.admin.command(f"shutdown session {ptr}")
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        out.append(time.time() - t0)
        sock.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, default=40)
    parser.add_argument("--tick", type=float, default=0.25)
    parser.add_argument("--log-level", default="info", help="sessiond's (debug: timings)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args()
    if args.tunnels < 30:
        raise SystemExit("bench: use at least 30 tunnels for a p99 worth printing")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-cut-") as tmp:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="bench-cut-kept-")   # logs kept for a look
            print(f"keeping logs in {tmp}")
        work = Path(tmp)
        state = work / "state"
        state.mkdir(mode=0o700)
        config_path = work / "node.yaml"
        config_path.write_text(yaml.safe_dump({
            "provider": {"id": "ab" * 32}, "state_dir": str(state),
            "log_level": args.log_level,
            "services": [{"id": "1A", "name": "p", "type": "proxy", "cost": "0.0006",
                          "firstPrePaidMinutes": 0, "subsequentPrePaidMinutes": 0},
                         {"id": "1B", "name": "b", "type": "proxy", "cost": "0.0006",
                          "firstPrePaidMinutes": 0}],
            "proxy": {"log_port": free_port_pair()},
            "sessions": {"tick": args.tick},
        }))
        config = config_mod.load(config_path)
        origin = ConnectOrigin()
        haproxy = MiniHaproxy(config, origin.port).start()
        watcher = CloseWatcher().start()
        try:
            base = baseline(haproxy, args.tunnels)
            for name, argv in (("busd", ["-c", BUSD]),
                               ("sessiond", ["-m", "services.sessiond.main"])):
                with open(work / f"{name}.out", "ab") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, *argv, "-c", str(config_path)], stdout=out,
                        stderr=subprocess.STDOUT, cwd=str(REPO), start_new_session=True))
            wait(lambda: "sessiond: ready" in (work / "sessiond.out").read_text(), 15,
                 "sessiond ready")
            ledger = Ledger.open(config.ledger_path)
            rules = access.rules_for(config, config.services[0])
            tunnels: dict[str, socket.socket] = {}
            for i in range(args.tunnels):
                authid = f"1A{i:014X}"
                # 2 s of credit plus a stagger, so they run dry over several ticks
                amount = 2 * PER_SECOND + (i * 37) % (4 * PER_SECOND)
                with ledger.transaction() as tx:
                    tx.ensure_authid(authid, "1A")
                    access.reevaluate(tx, tx.credit(authid, amount), rules, "bench")
                haproxy.add(authid, "1A")
                tunnels[authid] = open_tunnel(haproxy.port, authid)
                watcher.add(tunnels[authid])
            wait(lambda: len(watcher.closed) == len(tunnels), 60, "every tunnel closed")
            latencies = []
            for authid, sock in tunnels.items():
                at = ledger.conn.execute(
                    "SELECT at FROM audit WHERE authid = ? AND event = 'deactivated'",
                    (authid,)).fetchone()
                if at is None:
                    raise SystemExit(f"bench: {authid} closed without a deactivation")
                latencies.append(watcher.closed[sock] - at[0])
            ledger.close()
        finally:
            watcher.stop()
            for proc in procs:
                kill_group(proc)
            haproxy.stop()
            origin.close()
    ms = 1000.0
    p50, p99 = percentile(latencies, 50) * ms, percentile(latencies, 99) * ms
    b50, b99 = percentile(base, 50) * ms, percentile(base, 99) * ms
    print(f"tunnels: {len(latencies)}, sessiond tick {args.tick} s")
    print(f"credit exhausted -> tunnel closed: p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
          f"max {max(latencies) * ms:.1f} ms")
    print(f"baseline show sess + shutdown session -> closed: p50 {b50:.1f} ms  "
          f"p99 {b99:.1f} ms")
    print(f"ratio p50 {p50 / b50:.1f}x  p99 {p99 / b99:.1f}x  (issue #4 limit: 2000 ms)")
    return 0 if max(latencies) < 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
