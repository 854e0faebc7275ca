"""Which client connection (ip:port) carries which authid, learnt from haproxy's request log.

`show sess` does not show the authid, so sessiond listens to the request-log datagrams
haproxy sends at request time (`option logasap`) on `contract.session_log_port`
(lthn/haproxy/request_log.py reads them) and remembers the last authid each client
connection was admitted with.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from lthn.files import write_atomically
from lthn.haproxy.request_log import RequestLog
from services.sessiond.haproxy_answers import normalise_address

log = logging.getLogger(__name__)


class ClientMap:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.by_client: dict[str, tuple[str, float]] = {}   # "ip:port" -> (authid, seen)
        self.source_of: dict[str, str] = {}                 # authid -> last client ip
        self.bad_lines = 0   # request lines whose client address is not an address
        self.changed = False

    def learn(self, line: RequestLog) -> None:
        if not line.authid or line.reason:
            return  # refused or anonymous: authd's business, nothing to cut later
        try:
            client = normalise_address(line.client_ip, line.client_port)
        except ValueError as exc:
            self.bad_lines += 1
            if self.bad_lines <= 5 or self.bad_lines % 1000 == 0:
                log.warning("request log: dropped a line (%d so far): %s",
                            self.bad_lines, exc)
            return
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps({c: a for c, (a, _) in self.by_client.items()}))
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
