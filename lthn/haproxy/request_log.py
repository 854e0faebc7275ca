"""haproxy's request log: the datagrams it sends, parsed, and the socket they arrive on.

Format (`contract.LOG_FORMAT`, set in the generated haproxy config, one refused request
per datagram; admitted requests are not logged, #16):
    LTHN1 <client ip> <client port> <authid|-> <reason|-> <status> <method> <destination>
The destination is last and may contain anything but a newline; `-` means unset. authd
reads it and publishes the refusals (docs/design.md).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from lthn.haproxy.contract import LOG_HOST, LOG_TAG

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 1 << 20
BAD_LINES_LOGGED = 20  # then one line per 1000, so garbage cannot flood the log


class LogLineError(ValueError):
    """A datagram that is not one of our request log lines."""


@dataclass(frozen=True)
class RequestLog:
    client_ip: str
    client_port: int
    authid: str
    reason: str
    status: int
    method: str
    destination: str

    @property
    def client(self) -> str:
        return f"{self.client_ip}:{self.client_port}"


def _unset(value: str) -> str:
    return "" if value == "-" else value


class HaproxyNotice(LogLineError):
    """One of haproxy's own lines about itself ("Proxy lthn_proxy stopped ..." at a reload
    or stop), sent to the same log targets: expected, not ours, not worth a warning."""


# how haproxy's notices about its proxies begin (src/proxy.c, 2.6)
NOTICES = ("Proxy ", "Stopping ", "Pausing ", "Resuming ")


def parse(datagram: bytes) -> RequestLog:
    # a client's bytes (a Host header that is not UTF-8) reach the line as they are: keep
    # the line, with those bytes escaped, so the refusal is still an event (issue #15)
    text = datagram.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    parts = text.split(" ", 7)
    if len(parts) != 8 or parts[0] != LOG_TAG:
        if text.startswith(NOTICES):
            raise HaproxyNotice(text[:120])
        raise LogLineError(f"not a {LOG_TAG} line: {text[:80]!r}")
    _, ip, port, authid, reason, status, method, destination = parts
    if not port.isdigit() or not (status.isdigit() or status == "-1"):
        raise LogLineError(f"bad port or status in {text[:80]!r}")
    return RequestLog(ip, int(port), _unset(authid).upper(), _unset(reason), int(status),
                      _unset(method), _unset(destination))


class RequestLogListener:
    """The UDP socket on 127.0.0.1:`port` that haproxy's request log reaches.

    SO_REUSEPORT: several authd processes (supervisord numprocs) share the refusal port,
    each datagram reaching exactly one of them, so each refusal is published once; and a
    restarted daemon can bind while its old socket lingers. `name` says whose it is in
    the log lines about datagrams that are not ours.
    """

    def __init__(self, port: int, name: str, host: str = LOG_HOST) -> None:
        self.name = name
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.bad = 0  # datagrams dropped as not ours

    def fileno(self) -> int:
        return self.socket.fileno()

    def drain(self, limit: int = 10_000) -> list[RequestLog]:
        """Every waiting request line (at most `limit` datagrams, so the caller's loop
        keeps turning under a flood; the rest wait for the next call)."""
        lines = []
        for _ in range(limit):
            try:
                data, sender = self.socket.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            line = self.decode(data, f"{sender[0]}:{sender[1]}")
            if line is not None:
                lines.append(line)
        return lines

    def decode(self, data: bytes, sender: str) -> RequestLog | None:
        """The request line in one datagram, or None (counted and, sparingly, logged)."""
        try:
            return parse(data)
        except HaproxyNotice as exc:
            log.debug("%s: haproxy says: %s", self.name, exc)
            return None
        except LogLineError as exc:
            self.bad += 1
            if self.bad <= BAD_LINES_LOGGED or self.bad % 1000 == 0:
                log.warning("%s: dropped datagram %d from %s: %s", self.name, self.bad,
                            sender, exc)
            return None

    def close(self) -> None:
        self.socket.close()
