"""What lthn-vpnd and sessiond share about VPN clients (issue #18): the snapshot file.

lthn-vpnd writes `Config.vpn_clients_path` (`<state>/run/vpn-clients.json`) on every
change of OpenVPN's clients and at least every second; sessiond's VPN adapter reads it each
tick. A cache, not money: written atomically, never fsynced; the ledger's session rows are
what counts. One JSON object:

    {"version": 1, "written": <unix time>, "vpnd_pid": N,
     "openvpn_pid": N (0: vpnd is not attached to OpenVPN, nothing is known live),
     "clients": [{"ref": "<openvpn pid>:<cid>:<connected since>", "cid": N, "authid": "...",
                  "source": "ip:port", "since": <unix time>, "address": "<tunnel address>",
                  "received": bytes from the client, "sent": bytes to it,
                  "killed": "<why it was cut>" or "", "ended": <unix time> or 0,
                  "live": true while connected and not cut}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lthn.files import write_atomically

SNAPSHOT_VERSION = 1


def ref(openvpn_pid: int, cid: int, since: float) -> str:
    """A session's handle: OpenVPN numbers clients from 0 again after it restarts (a new
    pid, or the same pid after SIGHUP), so the connection time is part of it."""
    return f"{openvpn_pid}:{cid}:{int(since)}"


def write_snapshot(path: Path, data: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(data))   # sessiond never reads half a file


class SnapshotError(ValueError):
    """The snapshot file is missing or not what lthn-vpnd writes; the text says which."""


def read_snapshot(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SnapshotError(f"{path} does not exist (lthn-vpnd has not run yet)") from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"{path}: not a version {SNAPSHOT_VERSION} snapshot")
    if not isinstance(data.get("written"), int | float) \
            or not isinstance(data.get("clients"), list):
        raise SnapshotError(f"{path}: written or clients missing")
    return data
