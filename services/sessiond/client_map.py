"""Which client connection (ip:port) carries which authid, learnt from haproxy's request log.

`show sess` does not show the authid, so sessiond listens to the request-log datagrams
haproxy sends at request time (`option logasap`) on 127.0.0.1:<proxy.log_port + 1>
(docs/design.md) and remembers the last authid each client connection was admitted with.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from lthn.haproxy import request_log as haproxy_log
from services.sessiond.haproxy_answers import normalise_address

log = logging.getLogger(__name__)


class ClientMap:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.by_client: dict[str, tuple[str, float]] = {}   # "ip:port" -> (authid, seen)
        self.source_of: dict[str, str] = {}                 # authid -> last client ip
        self.bad_lines = 0
        self.changed = False

    def learn(self, datagram: bytes) -> None:
        try:
            line = haproxy_log.parse(datagram)
            client = normalise_address(line.client_ip, line.client_port)
        except (haproxy_log.LogLineError, ValueError) as exc:
            self.bad_lines += 1
            if self.bad_lines <= 5 or self.bad_lines % 1000 == 0:
                log.warning("request log: dropped a datagram (%d so far): %s",
                            self.bad_lines, exc)
            return
        if not line.authid or line.reason:
            return  # refused or anonymous: authd's business, nothing to cut later
        self.by_client[client] = (line.authid, self.clock())
        self.source_of[line.authid] = client.rpartition(":")[0]
        self.changed = True

    def clients_of(self, authid: str) -> set[str]:
        return {c for c, (a, _) in self.by_client.items() if a == authid}

    def forget(self, clients: set[str]) -> None:
        for client in clients:
            if self.by_client.pop(client, None) is not None:
                self.changed = True

    def save(self, path: Path) -> None:
        """Write the map (client -> authid) when it changed; a cache, not money: no fsync."""
        if not self.changed:
            return
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({c: a for c, (a, _) in self.by_client.items()}))
            os.replace(tmp, path)
            self.changed = False
        except OSError as exc:
            log.warning("client map: cannot write %s: %s", path, exc)

    def load(self, path: Path) -> None:
        """Read what a previous run saved; entries not live any more go at the next prune."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("client map: ignoring %s: %s", path, exc)
            return
        if not isinstance(data, dict):
            log.warning("client map: ignoring %s: not a mapping", path)
            return
        now = self.clock()
        for client, authid in data.items():
            if isinstance(client, str) and isinstance(authid, str):
                self.by_client[client] = (authid, now)
                self.source_of[authid] = client.rpartition(":")[0]
        log.info("client map: %d client connections from the previous run", len(data))

    def prune(self, live_clients: set[str], older_than: float) -> int:
        """Drop clients with no live stream, once older than `older_than` seconds (a
        datagram may arrive before its stream shows in `show sess`)."""
        limit = self.clock() - older_than
        gone = [c for c, (_, seen) in self.by_client.items()
                if c not in live_clients and seen < limit]
        self.forget(set(gone))
        authids = {a for a, _ in self.by_client.values()}
        for authid in [a for a in self.source_of if a not in authids]:
            del self.source_of[authid]
        return len(gone)


def open_log_socket(port: int) -> socket.socket:
    """The UDP socket haproxy's request log reaches (SO_REUSEPORT: a restarted sessiond
    can bind while the old socket lingers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket, into: ClientMap, limit: int = 10_000) -> int:
    """Read every waiting datagram (at most `limit`, so the loop keeps turning)."""
    count = 0
    while count < limit:
        try:
            datagram = sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            break
        into.learn(datagram)
        count += 1
    return count
