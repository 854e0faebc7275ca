"""What the node's haproxy config promises the daemons that read haproxy (issue #13).

services/proxy/haproxy_config.py renders these into haproxy.cfg; authd (the authid map,
the refusal log), sessiond (the stick table, the session log) and
lthn/haproxy/request_log.py (the log line) rely on them. Each is written here only, so
the two sides cannot drift apart. docs/design.md says how they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # lthn.config reads admin_socket_path from here
    from lthn.config import Config

# the stick table (a backend of this name) that tracks every admitted request by authid;
# `conn_cur > 0` means the authid has a live session
STICK_TABLE = "authid_sessions"
STICK_TABLE_DEFINITION = ("stick-table type string len 16 size 1m expire 1h "
                          "store conn_cur,bytes_in_cnt,bytes_out_cnt,http_req_cnt")

# one raw datagram per request (`option logasap`), no syslog header:
#   LTHN1 <client ip> <client port> <authid|-> <reason|-> <status> <method> <destination>
LOG_TAG = "LTHN1"
LOG_FORMAT = f"{LOG_TAG} %ci %cp %[var(txn.authid)] %[var(txn.reason)] %ST %HM %[var(txn.dest)]"
LOG_HOST = "127.0.0.1"
LOG_DATAGRAM_LEN = 4096   # haproxy truncates a longer line


def refusal_log_port(config: Config) -> int:
    """Where the request log reaches authd, which publishes the refusals in it."""
    return config.proxy.log_port


def session_log_port(config: Config) -> int:
    """Where the request log reaches sessiond, which learns which client connection
    carries which authid (to cut its streams)."""
    return config.proxy.log_port + 1


def log_ports(config: Config) -> tuple[int, int]:
    """Every port haproxy sends its request log to (the same line to each)."""
    return refusal_log_port(config), session_log_port(config)


def authid_map_path(config: Config) -> Path:
    """The runtime map of active authids: `AUTHID SERVICEID` lines, written from the ledger
    before haproxy starts, then kept equal to the ledger by authd (`add map`/`del map`)."""
    return config.state / "run" / "authids.map"


def map_file_text(authids: list[str]) -> str:
    """The authid map file haproxy loads at start: `AUTHID SERVICEID` per line."""
    return "".join(f"{a.upper()} {a[:2].upper()}\n" for a in authids)


def admin_socket_path(config: Config) -> Path:
    """haproxy's admin socket (runtime API, level admin)."""
    return config.state / "run" / "haproxy-admin.sock"
