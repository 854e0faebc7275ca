"""The machine's own addresses, and a watcher that says when they change (issue #15).

A client must never reach the node itself, whatever address it has now: haproxy and
squid read these when they start and follow them while they run. The watcher listens to
the kernel's address notifications (rtnetlink groups for IPv4 and IPv6 addresses), so a
change is seen at once without polling; it also lists again every `RELIST_SECONDS`, in
case a notification was lost (a full socket buffer drops them).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RELIST_SECONDS = 30.0


class AddressListError(OSError):
    """`ip -j addr` could not be run or said something unreadable."""


def current() -> list[str]:
    """Every address on this machine's interfaces (`ip -j addr`), sorted, without zone."""
    try:
        result = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True,
                                timeout=5, check=True)
        links = json.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise AddressListError(f"cannot list interface addresses with `ip -j addr`: {exc}"
                               ) from exc
    found = set()
    for link in links:
        for info in link.get("addr_info", []):
            address = str(info.get("local", "")).split("%")[0]
            try:
                found.add(ipaddress.ip_address(address))
            except ValueError:
                continue
    return [str(a) for a in sorted(found, key=lambda a: (a.version, a))]


class AddressWatcher:
    """A file descriptor that becomes readable when an address is added or removed.

        watcher = AddressWatcher()
        ... select([watcher, ...]) ...
        changed = watcher.check()      # the new list when it differs, else None

    `check()` drains the notifications and lists again; call it when the descriptor is
    readable and when `due()` says the periodic listing is due.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.socket: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
            self.socket = sock
        except OSError as exc:
            # without notifications the periodic listing still follows changes, later
            log.info("addresses: no kernel notifications (%s); listing every %.0f s",
                     exc, RELIST_SECONDS)
        self.addresses = current()
        self.listed_at = self.clock()

    def fileno(self) -> int:
        return self.socket.fileno() if self.socket is not None else -1

    def due(self) -> bool:
        return self.clock() - self.listed_at >= RELIST_SECONDS

    def seconds_to_due(self) -> float:
        return max(0.0, RELIST_SECONDS - (self.clock() - self.listed_at))

    def _drain(self) -> None:
        if self.socket is None:
            return
        while True:
            try:
                if not self.socket.recv(65536):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ENOBUFS: notifications were lost; the listing below catches up

    def check(self) -> list[str] | None:
        """List again; the new addresses when they changed, else None."""
        self._drain()
        self.listed_at = self.clock()
        try:
            found = current()
        except AddressListError as exc:
            log.error("addresses: %s; keeping the last list", exc)
            return None
        if found == self.addresses:
            return None
        added = sorted(set(found) - set(self.addresses))
        removed = sorted(set(self.addresses) - set(found))
        log.info("addresses: changed (added %s, removed %s)", ", ".join(added) or "none",
                 ", ".join(removed) or "none")
        self.addresses = found
        return found

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
