"""The client side of OpenVPN's management socket: lthn-vpnd's one connection (issue #18).

OpenVPN answers commands in the order they were sent, one answer each (a `SUCCESS:` /
`ERROR:` line, or a listing up to `END`), with real-time lines in between. So each command
is queued with whoever wants its answer, and answers are handed out in order.

Every command is built by lthn-vpnd from numbers and its own words, never from what a
client sent; `command()` still refuses anything but one line of printable ASCII, so a bug
cannot smuggle a second command onto the wire.
"""

from __future__ import annotations

import logging
import re
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

from services.vpn.management import ANSWERS, Event, Listing, Parser, Reply

log = logging.getLogger(__name__)

Answer = Reply | Listing
OnAnswer = Callable[[Answer], None]
COMMAND = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,1023}$")


class LinkDown(ConnectionError):
    """The connection is gone (OpenVPN stopped or restarted)."""


class ManagementLink:
    def __init__(self, path: Path, send_timeout: float = 2.0) -> None:
        self.path = path
        self.send_timeout = send_timeout
        self.sock: socket.socket | None = None
        self.parser = Parser()
        self.waiting: deque[OnAnswer | None] = deque()

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self) -> bool:
        """True when attached; False while OpenVPN is not listening (yet)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            return False
        sock.settimeout(self.send_timeout)
        self.sock = sock
        self.parser = Parser()
        self.waiting.clear()
        return True

    def fileno(self) -> int:
        if self.sock is None:
            raise LinkDown("not connected")
        return self.sock.fileno()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.waiting.clear()

    def command(self, line: str, on_answer: OnAnswer | None = None) -> None:
        """Send one command; `on_answer` gets its answer. Raises LinkDown."""
        if not COMMAND.match(line):
            raise ValueError(f"refusing to send {line[:60]!r}: not one printable line")
        if self.sock is None:
            raise LinkDown("not connected")
        self.waiting.append(on_answer)
        try:
            self.sock.sendall(line.encode("ascii") + b"\n")
        except OSError as exc:
            self.close()
            raise LinkDown(f"send failed: {exc}") from exc

    def read(self, on_event: Callable[[Event], None]) -> None:
        """Handle what OpenVPN sent since the last read (call when the socket is readable),
        in the order it was sent: answers go to their askers, the rest to `on_event`.
        Raises LinkDown on EOF."""
        if self.sock is None:
            raise LinkDown("not connected")
        chunks = []
        try:
            while True:
                data = self.sock.recv(262144, socket.MSG_DONTWAIT)
                if not data:
                    self.close()
                    raise LinkDown("OpenVPN closed the management connection")
                chunks.append(data)
                if len(data) < 262144:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.close()
            raise LinkDown(f"read failed: {exc}") from exc
        for event in self.parser.feed(b"".join(chunks)):
            if not isinstance(event, ANSWERS):
                on_event(event)
            elif not self.waiting:
                log.warning("openvpn: an answer nobody asked for: %s", event.summary())
            else:
                on_answer = self.waiting.popleft()
                if on_answer is not None:
                    on_answer(event)
                elif isinstance(event, Reply) and not event.ok:
                    log.warning("openvpn: command failed: %s", event.text)
