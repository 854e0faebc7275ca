"""The live VPN clients lthn-vpnd knows of, and the snapshot file sessiond charges from.

OpenVPN numbers clients (CID) from 0 in each process, so a session's handle (`ref`) is
`<openvpn pid>:<cid>:<connected since>`: a restarted OpenVPN's clients are new sessions.
The table follows >CLIENT:ESTABLISHED / DISCONNECT / BYTECOUNT_CLI and is replaced by
`status 3` whenever lthn-vpnd (re)attaches, so it converges on what OpenVPN holds.

The table's snapshot is what sessiond charges from (its format: lthn/vpn/contract.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from lthn.vpn.contract import SNAPSHOT_VERSION, ref
from services.vpn.management import StatusClient

log = logging.getLogger(__name__)


@dataclass
class Client:
    cid: int
    authid: str
    source: str              # ip:port the client connects from
    since: float             # unix time it was established
    address: str = ""        # its tunnel address
    received: int = 0        # bytes from the client
    sent: int = 0            # bytes to the client
    killed: str = ""         # why it was cut (then it is no longer reported live)
    ended: float = 0.0       # unix time it disconnected; 0 while connected

    @property
    def live(self) -> bool:
        return not self.killed and not self.ended


class ClientTable:
    def __init__(self) -> None:
        self.by_cid: dict[int, Client] = {}
        self.changed = True

    def established(self, cid: int, authid: str, source: str, now: float) -> Client:
        client = Client(cid, authid, source, now)
        self.by_cid[cid] = client
        self.changed = True
        return client

    def ended(self, cid: int, now: float) -> Client | None:
        """The client disconnected: reported once more, not live, with its final counters."""
        client = self.by_cid.get(cid)
        if client is not None and not client.ended:
            client.ended = now
            self.changed = True
        return client

    def prune_ended(self, before: float) -> None:
        for cid in [c for c, client in self.by_cid.items() if 0 < client.ended < before]:
            del self.by_cid[cid]
            self.changed = True

    def bytes(self, cid: int, received: int, sent: int) -> None:
        client = self.by_cid.get(cid)
        if client is not None and (client.received, client.sent) != (received, sent):
            client.received, client.sent = received, sent
            self.changed = True

    def address(self, cid: int, address: str) -> None:
        client = self.by_cid.get(cid)
        if client is not None:
            client.address = address

    def killed(self, cid: int, reason: str) -> None:
        client = self.by_cid.get(cid)
        if client is not None:
            client.killed = reason
            self.changed = True

    def live_of(self, authid: str) -> list[Client]:
        return [c for c in self.by_cid.values() if c.authid == authid and c.live]

    def replace(self, rows: list[tuple[StatusClient, str]]) -> tuple[int, int]:
        """Make the table what `status 3` says: (status row, its authid) pairs. Clients
        known already keep their state; returns (added, removed)."""
        # ended ones stay until pruned: sessiond still needs their final counters
        fresh = {cid: c for cid, c in self.by_cid.items() if c.ended}
        for row, authid in rows:
            known = self.by_cid.get(row.cid)
            if known is not None and known.authid == authid and not known.ended:
                known.received, known.sent = row.received, row.sent
                fresh[row.cid] = known
            else:
                fresh[row.cid] = Client(row.cid, authid, row.source, row.since, row.address,
                                        row.received, row.sent)
        added = len(set(fresh) - set(self.by_cid))
        removed = len(set(self.by_cid) - set(fresh))
        self.by_cid = fresh
        self.changed = True
        return added, removed

    def snapshot(self, written: float, vpnd_pid: int, openvpn_pid: int) -> dict[str, Any]:
        """What sessiond reads. `openvpn_pid` 0: not attached (nothing is known live)."""
        clients = []
        if openvpn_pid:
            clients = [dict(asdict(c), ref=ref(openvpn_pid, c.cid, c.since), live=c.live)
                       for c in self.by_cid.values()]
        return {"version": SNAPSHOT_VERSION, "written": written, "vpnd_pid": vpnd_pid,
                "openvpn_pid": openvpn_pid, "clients": clients}
