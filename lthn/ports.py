"""Loopback ports for parts that cannot use ipc:// (the demo, tests, benchmarks)."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when both TCP and UDP `port` can be bound on 127.0.0.1."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port_pair(tries: int = 50) -> int:
    """A port P with P+1 free too (haproxy logs to proxy.log_port and log_port+1)."""
    for _ in range(tries):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise OSError("no two adjacent free ports on 127.0.0.1")
