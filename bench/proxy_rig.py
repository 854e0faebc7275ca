"""The parts bench_proxy.py measures: the whole node, a bare haproxy, squid, a fast origin.

`NodeRig` runs the node as a user runs it: `lthn-node run` under supervisord with every
program (busd, paymentd, authd, sessiond, firewalld, squid, haproxy; tests/fixtures/
node.py), on a config with the fast origin as an `allow_destinations` exception and many
authids ACTIVE in its ledger before it starts (lthn-haproxy writes them into haproxy's
map, authd keeps it; sessiond charges the ones clients use). No wallet answers, so
paymentd waits for one, as on a node whose wallet is down.

`BareHaproxy` is the chain the node is measured against (issue #16): the same haproxy
binary and certificate, TLS 1.2, a plain `mode http` front end straight to the node's
squid: no map, no rules, no stick tables, no log. Its options (threads, ciphers) make
the variants the bench tries.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

from benchlib import wait  # noqa: E402

from lthn import config as config_mod  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from lthn.ports import free_port  # noqa: E402
from services.proxy import squid_config  # noqa: E402
from tests.fixtures.common import kill_group  # noqa: E402
from tests.fixtures.haproxy_copy import relocated  # noqa: E402
from tests.fixtures.node import Node, default_config, merge  # noqa: E402

SMALL_BODY = b"origin page, small\n" * 6          # 114 bytes
BLOCK = bytes(range(256)) * 4096                  # 1 MiB served over and over
SERVICE = "1A"
DAEMONS = ("busd", "paymentd", "authd", "sessiond", "firewalld")


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
            if b"/big/" in path:
                self.pending = int(path.rsplit(b"/", 1)[1])
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


# --- clients ---

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


def request_bytes(url: str, authid: str | None, close: bool = False) -> bytes:
    host = url.split("/")[2]
    lines = [f"GET {url} HTTP/1.1", f"Host: {host}"]
    if authid is not None:
        lines.append(f"X-LTHN-PaymentID: {authid}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Route:
    """How a client reaches the origin: through TLS (the node, a bare haproxy) or squid's
    plain port. TLS as Lethean's client speaks it: 1.2, no SNI, the node's CA. `pids`:
    the haproxy and squid processes it goes through, by part."""

    def __init__(self, name: str, port: int, ca_file: Path | None = None,
                 pids: dict[str, tuple[int, ...]] | None = None) -> None:
        self.name, self.port, self.ca_file = name, port, ca_file
        self.pids = pids or {}
        self._context: ssl.SSLContext | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.load_verify_locations(cafile=str(self.ca_file))
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
            self._context = context
        return self._context

    def connect(self, session: ssl.SSLSession | None = None) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if self.tls:
            sock = self.context().wrap_socket(raw, server_hostname=None, session=session)
        sock.settimeout(30)
        return sock


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) `pid` used so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> tuple[int, ...]:
    """`pid` and every process below it: lthn-haproxy and lthn-squid are small parents of
    the real program (haproxy's master and its worker, squid), whose CPU is what counts."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree = [pid]
    for parent in tree:
        tree += [child for child, ppid in parents.items() if ppid == parent]
    return tuple(tree)


def latencies(rig: NodeRig, routes: list[Route], count: int, block: int = 1,
              warmup: int = 100) -> list[list[float]]:
    """Seconds per GET of the small page (a paid authid, keep-alive), `count` per route,
    sequential, the route changing every `block` GETs after `warmup` GETs per route not
    counted. Each pass starts at the next route: a GET measured right after another
    route's (whose processes may still be busy on the two CPUs) is every route's turn
    alike. block 1: every GET follows another route's (each chain met with the caches
    the others left); block > 1: a client's run of GETs through one chain, the first of
    each run not counted (it measures the switch, which block 1 counts)."""
    request = request_bytes(rig.origin.url("/small"), rig.authid())
    buf = bytearray(1 << 16)
    socks = [r.connect() for r in routes]
    out: list[list[float]] = [[] for _ in routes]
    sent = 0        # GETs sent per route so far
    try:
        while min(len(samples) for samples in out) < count:
            for k in range(len(socks)):
                i = (sent // block + k) % len(socks)
                for b in range(block):
                    t0 = time.perf_counter()
                    socks[i].sendall(request)
                    if read_response(socks[i], buf) != 200:
                        raise SystemExit(f"bench: a GET via {routes[i].name} was not admitted")
                    if sent + b >= warmup and (block == 1 or b) and len(out[i]) < count:
                        out[i].append(time.perf_counter() - t0)
            sent += block
    finally:
        for sock in socks:
            sock.close()
    return out


# --- the whole node ---

class NodeRig:
    """The node under supervisord with `authids` ACTIVE authids; `stop()` ends it all."""

    def __init__(self, work: Path, authids: int) -> None:
        self.work = work
        self.origin = Origin()
        state = work / "state"
        self.settings = merge(default_config(state), {
            # connected billing (the default) at 0.001/min; credit for a day each
            "services": [{"id": SERVICE, "name": "Proxy", "type": "proxy",
                          "cost": "0.001", "firstPrePaidMinutes": 0}],
            "proxy": {"allow_destinations": [f"127.0.0.1:{self.origin.port}"],
                      "dns_servers": ["127.0.0.1"]},   # nothing leaves the machine
            "log_level": "info",
        })
        config_path = work / "node.yaml"
        config_path.write_text(yaml.safe_dump(self.settings, sort_keys=False))
        self.config = config_mod.load(config_path)
        self.node = Node(work, self.settings, (*DAEMONS, "squid", "haproxy"))
        self.active = [f"{SERVICE}{i:014X}" for i in range(authids)]

    def start(self) -> NodeRig:
        self.origin.start()
        self.config.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        ledger = Ledger.open(self.config.ledger_path)
        credit = self.config.atomic(self.config.services[0].cost) * 60 * 24
        try:
            with ledger.transaction() as tx:
                for authid in self.active:
                    tx.ensure_authid(authid, SERVICE)
                    tx.credit(authid, credit)
                    tx.activate(authid)   # PENDING -> ACTIVE
        finally:
            ledger.close()
        self.node.start(timeout=90)
        small = self.origin.url("/small")
        wait(lambda: self.get(self.squid, small) == 200, 30, "squid fetching from the origin")
        wait(lambda: self.get(self.route, small, "1A" + "F" * 14) == 403, 30,
             "haproxy refusing an unpaid authid")
        wait(lambda: self.get(self.route, small, self.active[-1]) == 200, 30,
             "haproxy admitting a paid authid")
        return self

    @property
    def route(self) -> Route:
        return Route("node", self.config.proxy.port, self.config.state / "tls" / "ca.pem",
                     {"haproxy": process_tree(self.node.pid("haproxy")),
                      "squid": process_tree(self.node.pid("squid"))})

    @property
    def squid(self) -> Route:
        return Route("squid alone", self.config.proxy.squid_port, None,
                     {"squid": process_tree(self.node.pid("squid"))})

    def pids(self) -> dict[str, int]:
        return {name: self.node.pid(name) for name in (*DAEMONS, "squid", "haproxy")}

    def authid(self) -> str:
        return random.choice(self.active)

    def get(self, route: Route, url: str, authid: str | None = None) -> int:
        """One GET on a new connection; the status."""
        with route.connect() as sock:
            sock.sendall(request_bytes(url, authid))
            return read_response(sock, bytearray(1 << 16))

    def stop(self) -> None:
        self.node.stop()
        self.origin.stop()


# --- the bare chain ---

BARE_CONFIG = """\
global
    stats socket {admin} mode 600 level admin
    ssl-default-bind-options ssl-min-ver TLSv1.2
{global_extra}
defaults
    mode http
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 10s
frontend bare
    bind 127.0.0.1:{port} ssl crt {crt} alpn http/1.1{bind_extra}
    default_backend squid
backend squid
    server squid 127.0.0.1:{squid_port}
"""


class BareHaproxy:
    """haproxy TLS 1.2 -> the node's squid, nothing else; `nbthread`/`ciphers` vary it."""

    def __init__(self, rig: NodeRig, name: str, nbthread: int | None = None,
                 ciphers: str | None = None, squid: SmpSquid | None = None) -> None:
        self.rig, self.name, self.squid = rig, name, squid
        self.port = free_port()
        run = rig.work / "bare" / re.sub(r"[^a-z0-9]+", "-", name.lower())
        run.mkdir(parents=True, exist_ok=True)
        self.cfg = run / "haproxy.cfg"
        self.cfg.write_text(BARE_CONFIG.format(
            admin=run / "admin.sock", port=self.port,
            crt=rig.config.state / "tls" / "provider.pem",
            squid_port=squid.port if squid else rig.config.proxy.squid_port,
            global_extra=f"    nbthread {nbthread}" if nbthread else "",
            bind_extra=f" ciphers {ciphers}" if ciphers else ""))
        self.out = run / "haproxy.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> BareHaproxy:
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait(lambda: self.rig.get(self.route, self.rig.origin.url("/small")) == 200, 30,
             f"the bare haproxy {self.name!r} through squid")
        return self

    @property
    def route(self) -> Route:
        assert self.proc is not None
        squid = self.squid.pids() if self.squid else (self.rig.node.pid("squid"),)
        return Route(self.name, self.port, self.rig.config.state / "tls" / "ca.pem",
                     {"haproxy": (self.proc.pid,), "squid": squid})

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


class SmpSquid:
    """The node's squid config with `workers N` (squid's SMP mode), its own port. The node
    runs squid with -N (one process, no workers: what supervisord can watch); SMP needs
    `squid --foreground` instead, a master with N worker kids and a coordinator."""

    def __init__(self, rig: NodeRig, workers: int) -> None:
        self.rig, self.workers = rig, workers
        self.port = free_port()
        text = squid_config.render(rig.config)
        text = re.sub(r"(?m)^http_port .*$", f"http_port 127.0.0.1:{self.port}", text)
        text = re.sub(r"(?m)^error_directory .*\n", "", text)   # squid's standard pages
        self.cfg = rig.work / f"squid-workers-{workers}.conf"
        self.cfg.write_text(text + f"\nworkers {workers}\n")
        self.cfg.chmod(0o644)
        self.proc: subprocess.Popen | None = None

    def start(self) -> SmpSquid:
        out = open(self.rig.work / f"squid-workers-{self.workers}.out", "ab")
        self.proc = subprocess.Popen(["squid", "--foreground", "-f", str(self.cfg)],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        route = Route(f"squid alone, {self.workers} workers", self.port)
        wait(lambda: len(self.pids()) >= self.workers + 2 and self.rig.get(
            route, self.rig.origin.url("/small")) == 200, 30, "squid's SMP workers")
        return self

    def pids(self) -> tuple[int, ...]:
        """The master and every kid (workers, coordinator)."""
        assert self.proc is not None
        return process_tree(self.proc.pid)

    @property
    def route(self) -> Route:
        return Route(f"squid alone, {self.workers} workers", self.port, None,
                     {"squid": self.pids()})

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


# --- a copy of a haproxy.cfg beside the node ---

class HaproxyCopy:
    """haproxy on `text` (the node's haproxy.cfg, or a variant of it), in `directory`: its
    bind on a port of its own, its admin socket there, its log lines to a sink nobody
    reads (tests/fixtures/haproxy_copy.py); the map, lists and squid the node's.
    `wrapper`: a command to run haproxy under (valgrind's callgrind)."""

    def __init__(self, rig: NodeRig, text: str, directory: Path,
                 wrapper: tuple[str, ...] = ()) -> None:
        directory.mkdir(parents=True)
        self.rig, self.dir, self.name = rig, directory, directory.name
        self.port = free_port()
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        (directory / "haproxy.cfg").write_text(relocated(
            text, self.port, directory / "admin.sock", self.sink.getsockname()[1]))
        with open(directory / "haproxy.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*wrapper, "haproxy", "-db", "-f", str(directory / "haproxy.cfg")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def route(self) -> Route:
        return Route(self.name, self.port, self.rig.config.state / "tls" / "ca.pem",
                     {"haproxy": (self.proc.pid,)})

    def admitting(self, timeout: float) -> HaproxyCopy:
        """Wait until it admits the rig's paid GET (haproxy's start; callgrind's is slow)."""
        rig = self.rig
        wait(lambda: rig.get(self.route, rig.origin.url("/small"), rig.active[-1]) == 200,
             timeout, f"the haproxy copy {self.name} answering 200 ({self.dir / 'haproxy.log'})")
        return self

    def stop(self) -> None:
        kill_group(self.proc)
        self.sink.close()


def settle(seconds: float = 0.5) -> None:
    """Let the previous workload's connections close before the next one starts."""
    time.sleep(seconds)


__all__ = ["BareHaproxy", "HaproxyCopy", "NodeRig", "Origin", "Route", "SmpSquid",
           "cpu_seconds", "latencies", "read_response", "request_bytes", "settle", "wait"]
