"""haproxy's runtime API over its admin socket: one command per connection.

Parsers for the answers live beside their users; one that two programs need lives here
(`show info`: authd notices a new haproxy process, lthn-haproxy a reload's new worker).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path


class RuntimeAnswerError(ValueError):
    """haproxy answered a runtime command with an error message."""


def parse_show_info(answer: str) -> dict[str, str]:
    """`show info` -> its `Name: value` pairs."""
    info = {}
    for line in answer.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            info[name.strip()] = value.strip()
    if "Pid" not in info:
        raise RuntimeAnswerError(f"show info without Pid: {answer[:80]!r}")
    return info


class HaproxyUnavailable(OSError):
    """The admin socket is missing or haproxy does not answer (restarting, stopped)."""


class HaproxyAdmin:
    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def command(self, line: str, payload: str | None = None) -> str:
        """Send one command (newlines in `line` are refused) and return the whole answer.

        `payload` is sent with haproxy's `<<` syntax (e.g. many `add map` entries at once).
        """
        return b"".join(self.answer_chunks(line, payload)).decode(errors="replace")

    def answer_chunks(self, line: str, payload: str | None = None) -> Iterator[bytes]:
        """`command`'s answer as haproxy sends it, chunk by chunk, for a reader that works
        while haproxy still writes (a `show table` of 10,000 entries, #16). Raises
        HaproxyUnavailable (an OSError) while iterating as `command` does."""
        if "\n" in line or "\r" in line:
            raise ValueError("a runtime command is one line")
        data = line
        if payload is not None:
            data = f"{line} <<\n{payload.rstrip(chr(10))}\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise HaproxyUnavailable(f"haproxy admin socket {self.path}: {exc}") from exc
            sock.sendall(data.encode() + b"\n")
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                yield chunk
        except TimeoutError as exc:
            raise HaproxyUnavailable(f"haproxy admin socket {self.path}: no answer") from exc
        finally:
            sock.close()
