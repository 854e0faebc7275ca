"""The VPN kind's adapter (issue #18): what is live comes from lthn-vpnd's snapshot of
OpenVPN's clients (services/vpn/clients.py), and cutting is a `session.kill` message that
lthn-vpnd turns into `client-kill` (OpenVPN has one management connection; lthn-vpnd
holds it).

A session is one OpenVPN client (`ref` = openvpn pid, client id, connection time);
counters are that client's own, so they start at 0. A snapshot older than STALE_SECONDS
(lthn-vpnd writes one every second) or one from a lthn-vpnd not attached to OpenVPN says
nothing about what is live: poll() raises VpnTrouble, as ProxyAdapter does when haproxy
does not answer, and sessiond keeps the rows as they are until the outage is long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from lthn.authid import short
from lthn.messages import Message, SessionKill
from lthn.vpn.contract import SnapshotError, read_snapshot
from services.sessiond.session_book import Observed

log = logging.getLogger(__name__)

KIND = "vpn"
STALE_SECONDS = 5.0
ASK_AGAIN_SECONDS = 2.0   # a kill not done by then (lthn-vpnd busy or restarting) is re-sent


class VpnTrouble(Exception):
    """lthn-vpnd's view is missing, stale or not attached to OpenVPN; retried next tick."""


class VpnAdapter:
    kind = KIND

    def __init__(self, path: Path, publish: Callable[[Message], None],
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.publish = publish
        self.wall = wall
        self.live: dict[str, Observed] = {}
        self.asked: dict[str, float] = {}    # authid -> when a kill was last asked

    def poll(self) -> dict[str, Observed]:
        """Every client in the snapshot by ref, live or just ended; raises VpnTrouble."""
        try:
            data = read_snapshot(self.path)
        except SnapshotError as exc:
            raise VpnTrouble(str(exc)) from None
        age = self.wall() - data["written"]
        if age > STALE_SECONDS:
            raise VpnTrouble(f"lthn-vpnd last reported {age:.0f} s ago")
        if not data.get("openvpn_pid"):
            raise VpnTrouble("lthn-vpnd is not attached to OpenVPN")
        seen: dict[str, Observed] = {}
        for client in data["clients"]:
            try:
                seen[str(client["ref"])] = Observed(
                    ref=str(client["ref"]), authid=str(client["authid"]),
                    source=str(client["source"]), bytes_in=int(client["received"]),
                    bytes_out=int(client["sent"]), live=bool(client["live"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise VpnTrouble(f"{self.path}: a client entry lacks {exc}") from None
        self.live = {r: o for r, o in seen.items() if o.live}
        for authid in [a for a in self.asked if a not in self.authids]:
            del self.asked[authid]
        return seen

    @property
    def authids(self) -> set[str]:
        return {o.authid for o in self.live.values()}

    def cut(self, reasons: dict[str, str]) -> dict[str, int]:
        """Ask lthn-vpnd to cut the live clients of each authid (as last seen); returns how
        many clients each has. A request is repeated only after ASK_AGAIN_SECONDS, so a
        tick that finds the client still live does not flood the bus."""
        counts = {}
        now = self.wall()
        for authid, reason in reasons.items():
            count = sum(1 for o in self.live.values() if o.authid == authid)
            counts[authid] = count
            if not count or now - self.asked.get(authid, -1e9) < ASK_AGAIN_SECONDS:
                continue
            again = authid in self.asked
            self.asked[authid] = now
            self.publish(SessionKill(authid=authid, kind=KIND, reason=reason, ref=""))
            log.log(logging.WARNING if again else logging.INFO,
                    "authid %s: %s lthn-vpnd to cut %d VPN clients, %s", short(authid),
                    "asking again" if again else "asked", count, reason)
        return counts

    def kill_session(self, ref: str, authid: str, reason: str) -> int:
        """Ask lthn-vpnd to cut one client (an operator's `session kill`); returns 1 when
        it is live as last seen, else 0 (nothing is asked)."""
        if ref not in self.live:
            return 0
        self.publish(SessionKill(authid=authid, kind=KIND, reason=reason, ref=ref))
        log.info("session %s of authid %s: asked lthn-vpnd to cut it, %s", ref,
                 short(authid), reason)
        return 1
