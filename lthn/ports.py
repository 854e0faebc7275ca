"""Loopback ports for parts that cannot use ipc:// (the demo, tests, benchmarks)."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (outgoing connections, bind to 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_pair(tries: int = 200) -> int:
    """A port P with P+1 free too (haproxy logs to proxy.log_port and log_port+1).

    Picked below the ephemeral range: Linux gives bind(0) odd ports there and outgoing
    connections even ones, so P+1 next to a kernel-picked P is often held by a busy
    machine's connections (a test failed with no free pair in 50 tries under load).
    """
    low = max(1024, ephemeral_range()[0] - 12000)
    high = ephemeral_range()[0] - 2
    rng = random.SystemRandom()
    for _ in range(tries):
        port = rng.randrange(low, high)
        if port_is_free(port) and port_is_free(port + 1):
            return port
    raise OSError(f"no two adjacent free ports on 127.0.0.1 in {low}-{high}")


class PortInUse(Exception):
    """A port the config names is taken by another program; the text names key and port."""


@contextmanager
def naming(key: str, kind: str, address: tuple[str, int]) -> Iterator[None]:
    """Around a bind: a taken port raises PortInUse naming the config key (#14)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(f"{key}: {kind} {address[0]}:{address[1]} is already in use by "
                        "another program; stop it or choose another port") from None
