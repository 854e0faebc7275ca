"""Refusals: haproxy's request log (UDP datagrams) turned into `access.refused` events.

Every request haproxy refuses (its own rules or squid's destination refusal) carries a
reason in its log line; firewalld later bans from these events, so each one names the
real source address (ROADMAP). SO_REUSEPORT: with several authd processes each datagram
reaches exactly one of them, so each refusal is published once.
"""

from __future__ import annotations

import logging
import socket

from lthn.authid import short
from lthn.haproxy import request_log as haproxy_log
from lthn.messages import AccessRefused

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
BAD_LINES_LOGGED = 20  # then one line per 1000, so garbage cannot flood the log


class RefusalListener:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.socket.bind((host, port))
        self.socket.setblocking(False)
        self.bad = 0

    def fileno(self) -> int:
        return self.socket.fileno()

    def drain(self) -> list[AccessRefused]:
        """Read every waiting datagram; return the refusals among them."""
        out = []
        while True:
            try:
                data, sender = self.socket.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return out
            refusal = self.refusal(data, f"{sender[0]}:{sender[1]}")
            if refusal is not None:
                out.append(refusal)

    def refusal(self, data: bytes, sender: str) -> AccessRefused | None:
        try:
            line = haproxy_log.parse(data)
        except haproxy_log.LogLineError as exc:
            self.bad += 1
            if self.bad <= BAD_LINES_LOGGED or self.bad % 1000 == 0:
                log.warning("refusals: dropped datagram %d from %s: %s", self.bad, sender, exc)
            return None
        if not line.reason:
            return None  # admitted: sessiond reads those
        log.info("refused %s: %s (authid %s, %s %s)", line.client_ip, line.reason,
                 short(line.authid) if line.authid else "-", line.method, line.destination)
        return AccessRefused(reason=line.reason, source=line.client_ip, authid=line.authid,
                             destination=line.destination, kind="proxy")

    def close(self) -> None:
        self.socket.close()
