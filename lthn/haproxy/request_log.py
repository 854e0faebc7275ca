"""Parses the request log haproxy sends as raw datagrams (see docs/design.md).

Format (set in the generated haproxy config, one request per datagram):
    LTHN1 <client ip> <client port> <authid|-> <reason|-> <status> <method> <destination>
The destination is last and may contain anything but a newline; `-` means unset.
"""

from __future__ import annotations

from dataclasses import dataclass

TAG = "LTHN1"


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


def parse(datagram: bytes) -> RequestLog:
    try:
        text = datagram.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise LogLineError("not UTF-8") from None
    parts = text.split(" ", 7)
    if len(parts) != 8 or parts[0] != TAG:
        raise LogLineError(f"not a {TAG} line: {text[:80]!r}")
    _, ip, port, authid, reason, status, method, destination = parts
    if not port.isdigit() or not (status.isdigit() or status == "-1"):
        raise LogLineError(f"bad port or status in {text[:80]!r}")
    return RequestLog(ip, int(port), _unset(authid).upper(), _unset(reason), int(status),
                      _unset(method), _unset(destination))
