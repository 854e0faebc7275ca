"""The parts bench_proxy.py measures: a node's real haproxy and squid, a fast origin, clients.

`ProxyRig` writes a node config (tests/fixtures/node.py's defaults on loopback, the origin
as an `allow_destinations` exception) and starts the node's own programs `lthn-haproxy`
and `lthn-squid` (services.proxy.run_haproxy / run_squid: they render haproxy.cfg and
squid.conf from that config, then exec the real binaries). Authids are made active the
way a node does it: ACTIVE rows in the ledger, then authd's `MapSync.resync` writes them
into haproxy's runtime map over the admin socket in batches that fit haproxy's CLI
buffer. No wallet, busd, authd or sessiond runs: nothing charges or removes an authid.

haproxy's request log goes to two loopback UDP sockets this module binds and never reads
(the kernel drops what overflows), so haproxy logs every request as on a real node.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

from benchlib import wait  # noqa: E402

from lthn import config as config_mod  # noqa: E402
from lthn.haproxy.contract import authid_map_path  # noqa: E402
from lthn.haproxy.runtime import HaproxyAdmin  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from services.authd.map_sync import MapSync, parse_show_map  # noqa: E402
from tests.fixtures.node import default_config, merge  # noqa: E402
from tests.fixtures.proxy import ProxyClient  # noqa: E402

SMALL_BODY = b"origin page, small\n" * 6          # 114 bytes
BLOCK = bytes(range(256)) * 4096                  # 1 MiB served over and over
SERVICE = "1A"
# this tree's lthn-haproxy / lthn-squid (their modules have no __main__ guard)
RUN_MAIN = "import sys; from {} import main; sys.exit(main(sys.argv[1:]))"


def _with_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [pid, *(int(child) for child in fh.read().split())]
    except OSError:
        return [pid]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


# --- the origin: keep-alive HTTP/1.1 from memory, in its own process ---

class _OriginProtocol(asyncio.Protocol):
    """GET /small -> SMALL_BODY; GET /big/<n> -> n bytes. Flow-controlled, no copies kept."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.pending = 0          # bytes of a big body still to write
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/big/"):
                self.pending = int(path[5:])
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-"
                                     b"stream\r\nContent-Length: %d\r\n\r\n" % self.pending)
                self._pump()
            else:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: %d\r\n\r\n%s"
                                     % (len(SMALL_BODY), SMALL_BODY))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        view = memoryview(BLOCK)
        while self.pending and not self.paused:
            n = min(self.pending, len(BLOCK))
            self.pending -= n
            self.transport.write(view[:n])


def _serve_origin(sock: socket.socket) -> None:
    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(_OriginProtocol, sock=sock)
        await server.serve_forever()
    asyncio.run(run())


class Origin:
    """The origin on 127.0.0.1 in a forked process (so it never waits for our GIL)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.proc = multiprocessing.get_context("fork").Process(
            target=_serve_origin, args=(self.sock,), daemon=True)

    def start(self) -> Origin:
        self.proc.start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.pid is not None:
            self.proc.kill()
            self.proc.join(5)
        self.sock.close()


# --- clients: one keep-alive connection each ---

def read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one response with a Content-Length into `buf` (reused); return the status."""
    view = memoryview(buf)
    got = 0
    while True:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("closed before a whole response head")
        got += n
        end = bytes(view[:got]).find(b"\r\n\r\n")
        if end >= 0:
            break
    head = bytes(view[:end]).decode("iso-8859-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    left = length - (got - end - 4)
    while left > 0:
        n = sock.recv_into(view, min(left, len(buf)))
        if not n:
            raise ConnectionError(f"closed with {left} bytes of the body unread")
        left -= n
    return status


def request_bytes(url: str, authid: str | None) -> bytes:
    host = url.split("/")[2]
    lines = [f"GET {url} HTTP/1.1", f"Host: {host}"]
    if authid is not None:
        lines.append(f"X-LTHN-PaymentID: {authid}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Route:
    """How a client reaches the origin: the node (TLS to haproxy) or squid directly."""

    def __init__(self, name: str, port: int, ca_file: Path | None) -> None:
        self.name, self.port, self.ca_file = name, port, ca_file

    @property
    def via_node(self) -> bool:
        return self.ca_file is not None

    def connect(self) -> socket.socket:
        if self.ca_file is not None:
            # TLS 1.2 without SNI, the node's CA: what Lethean's client does
            sock: socket.socket = ProxyClient("127.0.0.1", self.port, self.ca_file).open()
        else:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(30)
        return sock


# --- the node's proxy programs ---

class ProxyRig:
    """A node's haproxy and squid under one temp dir; `stop()` kills all it started."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.origin = Origin()
        self.log_sinks: list[socket.socket] = []
        self.procs: list[subprocess.Popen] = []
        self.ledger: Ledger | None = None
        self.active: list[str] = []
        state = work / "state"
        settings = merge(default_config(state), {
            "proxy": {"allow_destinations": [f"127.0.0.1:{self.origin.port}"],
                      "dns_servers": ["127.0.0.1"]},   # nothing leaves the machine
            "log_level": "info",
        })
        self.config_path = work / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.config = config_mod.load(self.config_path)
        self.admin = HaproxyAdmin(self.config.haproxy_admin_socket)

    @property
    def node(self) -> Route:
        return Route("node", self.config.proxy.port, self.config.state / "tls" / "ca.pem")

    @property
    def squid(self) -> Route:
        return Route("squid", self.config.proxy.squid_port, None)

    def start(self) -> ProxyRig:
        self.origin.start()
        for port in (self.config.proxy.log_port, self.config.proxy.log_port + 1):
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", port))
            self.log_sinks.append(sink)
        self.config.state.mkdir(mode=0o700, exist_ok=True)
        (self.config.state / "log").mkdir(exist_ok=True)
        # lthn-haproxy opens (and so creates) the ledger; one program at a time
        self._spawn("haproxy", "services.proxy.run_haproxy")
        wait(lambda: "Pid:" in self.admin.command("show info"), 30, "haproxy's admin socket")
        self._spawn("squid", "services.proxy.run_squid")
        self.ledger = Ledger.open(self.config.ledger_path)
        small = self.origin.url("/small")
        wait(lambda: self.get(self.squid, small) == 200, 30, "squid fetching from the origin")
        wait(lambda: self.get(self.node, small, "1A" + "0" * 14) == 403, 30,
             "haproxy refusing an unpaid authid")
        return self

    def _spawn(self, name: str, module: str) -> None:
        with open(self.config.state / "log" / f"{name}.log", "ab") as out:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", RUN_MAIN.format(module), "-c", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO),
                start_new_session=True))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, all threads) used so far by haproxy, squid, origin."""
        # lthn-haproxy execs haproxy (the same pid); lthn-squid runs squid as its child
        # (issue #14), so a process's live children count too
        pids = {"haproxy": self.procs[0].pid, "squid": self.procs[1].pid,
                "origin": self.origin.proc.pid}
        return {name: sum(map(_cpu_seconds, _with_children(pid))) for name, pid in pids.items()}

    def log_tail(self, name: str) -> str:
        path = self.config.state / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def get(self, route: Route, url: str, authid: str | None = None) -> int:
        """One GET on a new connection; the status."""
        with route.connect() as sock:
            sock.sendall(request_bytes(url, authid))
            return read_response(sock, bytearray(1 << 16))

    def activate(self, total: int) -> tuple[float, float]:
        """Make `total` authids ACTIVE in the ledger, then resync haproxy's map from it as
        authd does. Returns (seconds in the ledger, seconds of the resync)."""
        assert self.ledger is not None
        t0 = time.perf_counter()
        fresh = [f"{SERVICE}{i:014X}" for i in range(len(self.active), total)]
        with self.ledger.transaction() as tx:
            for authid in fresh:
                tx.ensure_authid(authid, SERVICE)
                tx.activate(authid)  # PENDING -> ACTIVE
        t1 = time.perf_counter()
        self._resync()
        t2 = time.perf_counter()
        self.active += fresh
        self._check_map(total)
        return t1 - t0, t2 - t1

    def shrink(self, total: int) -> None:
        """Back to the first `total` active authids: the rest DEPLETED in the ledger, the
        map cleared at once (`clear map`; a resync would delete them one command each),
        then refilled by a resync. haproxy's stick table keeps what it tracked."""
        assert self.ledger is not None
        with self.ledger.transaction() as tx:
            for authid in self.active[total:]:
                tx.deactivate(authid)  # ACTIVE -> DEPLETED
        self.active = self.active[:total]
        answer = self.admin.command(f"clear map {authid_map_path(self.config)}")
        if answer.strip():
            raise SystemExit(f"bench: clear map failed: {answer.strip()}")
        self._resync()
        self._check_map(total)

    def _resync(self) -> None:
        assert self.ledger is not None
        sync = MapSync(self.admin, authid_map_path(self.config), self.ledger,
                       self.config.state / "run" / "authd-map.lock")
        try:
            result = sync.resync("bench")
        finally:
            sync.close()
        if result is None or result[1] != 0:
            raise SystemExit(f"bench: map resync failed or removed entries: {result}")

    def _check_map(self, total: int) -> None:
        answer = self.admin.command(f"show map {authid_map_path(self.config)}")
        in_map = sum(parse_show_map(answer).values())
        if in_map != total:
            raise SystemExit(f"bench: haproxy's map holds {in_map} entries, expected {total}")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if self.ledger is not None:
            self.ledger.close()
        for sink in self.log_sinks:
            sink.close()
        self.origin.stop()


__all__ = ["ProxyRig", "Route", "read_response", "request_bytes", "wait"]
