"""supervisord's XML-RPC interface on the node's unix socket (`run/supervisor.sock`), with
supervisor's own transport and a deadline on every call (a hung supervisord must not hang
lthnctl).

    rpc = SupervisorRpc(config.state / "run" / "supervisor.sock")
    for p in rpc.processes():   # every program process, with its state and pid
        ...
    rpc.signal("paymentd", "HUP")
"""

from __future__ import annotations

import socket
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

DEFAULT_TIMEOUT = 2.0


class SupervisorDown(Exception):
    """supervisord does not answer on its socket; the text says why."""


class SupervisorFault(Exception):
    """supervisord answered with a fault (e.g. BAD_NAME, NOT_RUNNING)."""


@dataclass(frozen=True)
class ProcessInfo:
    """One process as supervisord sees it."""
    name: str          # process name: paymentd, authd_0
    group: str         # program (group) name: paymentd, authd
    state: str         # RUNNING, STOPPED, STARTING, BACKOFF, EXITED, FATAL, ...
    pid: int           # 0 when not running
    start: float       # unix time it started (0: never)
    now: float         # supervisord's clock when asked
    description: str   # supervisord's words: "pid 123, uptime 0:01:02", "Not started"

    @property
    def never_started(self) -> bool:
        """Left out by `lthn-node run --without` (STOPPED, never started)."""
        return self.state == "STOPPED" and self.start == 0

    @property
    def uptime(self) -> float:
        return max(0.0, self.now - self.start) if self.state == "RUNNING" else 0.0

    @property
    def full_name(self) -> str:
        """What supervisorctl takes: `paymentd`, or `authd:authd_0` in a group."""
        return self.name if self.name == self.group else f"{self.group}:{self.name}"


class _Connection(UnixStreamHTTPConnection):
    """supervisor's unix-socket HTTP connection, with a timeout on connect and reads."""

    deadline = DEFAULT_TIMEOUT

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.deadline)
        self.sock.connect(self.socketfile)


class SupervisorRpc:
    def __init__(self, socket_path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = socket_path
        transport = SupervisorTransport(None, None, f"unix://{socket_path}")

        def connection() -> _Connection:
            conn = _Connection("localhost")
            conn.socketfile = str(socket_path)
            conn.deadline = timeout
            return conn
        transport._get_connection = connection
        # the host part is ignored: the transport talks to the unix socket
        self.proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def call(self, method: str, *args: Any) -> Any:
        if not self.path.exists():
            raise SupervisorDown(f"supervisord is not running (no socket at {self.path}; "
                                 "start the node with `lthn-node run`)")
        namespace, _, name = method.partition(".")
        try:
            return getattr(getattr(self.proxy, namespace), name)(*args)
        except xmlrpc.client.Fault as exc:
            raise SupervisorFault(exc.faultString) from None
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise SupervisorDown(f"supervisord does not answer on {self.path} ({why})"
                                 ) from None

    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo(name=p["name"], group=p["group"], state=p["statename"],
                            pid=int(p["pid"]), start=float(p["start"]), now=float(p["now"]),
                            description=p["description"])
                for p in self.call("supervisor.getAllProcessInfo")]

    def signal(self, full_name: str, signal_name: str) -> None:
        self.call("supervisor.signalProcess", full_name, signal_name)
