"""Refusals: haproxy's request log (UDP datagrams) turned into `access.refused` events.

Every request haproxy refuses (its own rules or squid's destination refusal) carries its
refusal's code (lthn/refusals.py) in its log line; firewalld later bans from these
events, so each one names the real source address (ROADMAP). The socket is shared by
every authd process (lthn/haproxy/request_log.py), so each refusal is published once.
"""

from __future__ import annotations

import logging

from lthn.authid import short
from lthn.haproxy.request_log import RequestLog, RequestLogListener
from lthn.messages import AccessRefused
from lthn.ports import naming
from lthn.refusals import Refusal

log = logging.getLogger(__name__)

SESSION_KIND = "proxy"


def refusal_event(line: RequestLog) -> AccessRefused | None:
    """The event for a refused request; None for a line without a reason (haproxy logs
    only refusals, but a line of an older config may still arrive)."""
    if not line.reason:
        return None
    refusal = Refusal.of(line.reason)
    # a code missing from the catalogue is published all the same: a refusal is never lost
    kind = refusal.kind.value if refusal else "unknown to this node"
    # debug only: firewalld logs one line per source and window, not one per refusal
    # (a flood wrote 31-50 MB of these per 30 s, issue #17)
    log.debug("refused %s: %s (%s; authid %s, %s %s)", line.client_ip, line.reason, kind,
             short(line.authid) if line.authid else "-", line.method, line.destination)
    return AccessRefused(reason=line.reason, source=line.client_ip, authid=line.authid,
                         destination=line.destination, kind=SESSION_KIND)


class RefusalListener:
    """authd's end of the request log: the refusals among its datagrams."""

    def __init__(self, port: int) -> None:
        # taken by another program: one line naming the key, not a traceback (#14)
        with naming("proxy.log_port", "udp", ("127.0.0.1", port)):
            self.log = RequestLogListener(port, "refusals")

    def fileno(self) -> int:
        return self.log.fileno()

    def drain(self) -> list[AccessRefused]:
        """Read every waiting datagram; return the refusals among them."""
        events = (refusal_event(line) for line in self.log.drain())
        return [event for event in events if event is not None]

    def refusal(self, data: bytes, sender: str) -> AccessRefused | None:
        """One datagram's refusal, if it is one."""
        line = self.log.decode(data, sender)
        return refusal_event(line) if line is not None else None

    def close(self) -> None:
        self.log.close()
