"""The client status request (`GET http://remote.lethean/status`), answered from the ledger.

haproxy routes it here (127.0.0.1:proxy.status_port) before the paid check. What a
deployed Lethean client reads (notes/lethean-protocol.md): 200 + JSON when the authid
may be used, 403 `X-LTHN-Status: NO_PAYMENT` when not (yet), 503 `BAD_ID` when the
provider id is wrong (statuses and bodies: lthn/refusals.py). Answered at once; the
original slept a second per request.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from lthn import credit_rules, refusals
from lthn.access import State, rules_for
from lthn.authid import AuthidError, parse_authid, short
from lthn.config import Config
from lthn.ledger import Ledger
from lthn.ports import naming
from lthn.refusals import OK, Refusal
from lthn.stats import Stats

log = logging.getLogger(__name__)

PAYMENT_HEADERS = ("X-LTHN-PaymentID", "X-ITNS-PaymentID")
MGMT_HEADERS = ("X-LTHN-MgmtID", "X-ITNS-MgmtID")


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str          # also sent as X-LTHN-Status
    body: bytes
    content_type: str = "text/plain"

    @classmethod
    def refused(cls, refusal: Refusal) -> Answer:
        return cls(refusal.http_status, refusal.code, refusal.body)


def authid_from(values: list[str]) -> str | None:
    """The one authid in the payment header values (repeats allowed), else None."""
    found = {v.strip().upper() for raw in values for v in raw.split(",") if v.strip()}
    if len(found) != 1:
        return None
    try:
        return parse_authid(found.pop())
    except AuthidError:
        return None


def upstream_time(epoch: float) -> str:
    """Lethean's time format (lib/util.py `timefmt`): local time, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def document(config: Config, ledger: Ledger, authid: str) -> dict[str, Any] | None:
    """The status JSON of an authid that may be used now, else None.

    Every key of upstream `AuthId.getInfo()` (lib/authids.py) with upstream's value
    formats (issue #15): `created`/`modified` local date strings, `activated`/`spending`
    "yes"/"no", `balance` coins, `overall` minutes spent, `left` minutes left,
    `txid_history` comma-joined. What this node knows more precisely is under new keys:
    epoch times, exact atomic amounts, the txids as a list.
    """
    row = ledger.authid(authid)
    if row is None or row.state != State.ACTIVE.value:
        return None
    service = config.service(row.service_id)
    payments = [p for p in ledger.payments_of(authid) if p.state != "revoked"]
    rules = rules_for(config, service) if service else None
    cost = rules.cost if rules else 0
    units = config.wallet.units
    minutes_spent = row.charged_ms // credit_rules.MS_PER_MINUTE
    txids = [p.txid for p in payments]
    return {
        # upstream's keys, upstream's formats
        "id": row.authid,
        "serviceid": row.service_id,
        "created": upstream_time(row.created),
        "modified": upstream_time(row.modified),
        "activated": _yes_no(True),
        "spending": _yes_no(row.spending_since is not None),
        "balance": float(Decimal(row.balance) / units),        # display only
        "overall": minutes_spent,
        "left": float(Decimal(max(0, row.balance)) / cost) if cost else 0.0,
        "confirmations": min((p.confirmations for p in payments), default=0),
        "charged_cnt": len(payments),                          # credits received
        "discharged_cnt": minutes_spent,                       # minutes charged
        "txid": txids[-1] if txids else "",
        "txid_history": ",".join(txids),
        # this node's own, exact
        "state": row.state,
        "created_at": row.created,
        "modified_at": row.modified,
        "spending_since": row.spending_since,
        "txids": txids,
        "minutes_bought": row.credit // cost if cost else 0,
        "minutes_left": credit_rules.minutes_left(rules, row.balance) if rules else 0,
        "balance_atomic": row.balance,
        "credit_atomic": row.credit,
        "spent_atomic": row.spent,
        "pending_atomic": row.pending,
        "cost_atomic_per_minute": cost,
        "atomic_units_per_coin": units,
        "charged_ms": row.charged_ms,
        "activations": row.activations,
    }


def answer(config: Config, ledger: Ledger, headers: Any) -> Answer:
    """headers: anything with `get_all(name)` (case-insensitive), like http.client's."""
    mgmt = [v.strip().lower() for name in MGMT_HEADERS for v in (headers.get_all(name) or [])]
    if not mgmt or any(v != config.provider.id.lower() for v in mgmt):
        return Answer.refused(Refusal.BAD_ID)
    authid = authid_from([v for name in PAYMENT_HEADERS for v in (headers.get_all(name) or [])])
    # no usable header, or an authid not paid: the same to a client, which keeps polling
    doc = document(config, ledger, authid) if authid is not None else None
    if doc is None:
        return Answer.refused(Refusal.NO_PAYMENT)
    return Answer(200, OK, json.dumps(doc, sort_keys=True).encode() + b"\n",
                  "application/json")


class _Server(HTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, config: Config, address: tuple[str, int],
                 stats: Stats | None = None) -> None:
        self.config = config
        self.ledger: Ledger | None = None  # opened in the serving thread (sqlite is per thread)
        self.stats = stats or Stats()      # decisions and their latency, for watchd (#19)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # several authd processes (supervisord numprocs) share the port
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # taken by another program: one line naming the key, not a traceback (#14)
        with naming("proxy.status_port", "tcp", self.server_address):
            super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # haproxy sends whole requests; a silent peer must not hold the server

    def _respond(self) -> None:
        assert self.server.ledger is not None
        began = time.perf_counter()
        try:
            result = answer(self.server.config, self.server.ledger, self.headers)
        except Exception:
            log.exception("status: failed to answer %s", self.path[:100])
            result = Answer.refused(Refusal.CONNECTION_ERROR)
        self.server.stats.observe("auth_decision_seconds", time.perf_counter() - began)
        self.server.stats.count("auth_decisions_total", {"decision": result.reason})
        # no Server header: a client must not learn what the node runs (issue #15)
        self.send_response_only(result.status, result.reason)
        self.send_header("Date", self.date_time_string())
        self.send_header(refusals.HEADER, result.reason)
        self.send_header("Content-Type", result.content_type)
        self.send_header("Content-Length", str(len(result.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(result.body)
        authid = authid_from(self.headers.get_all("X-LTHN-PaymentID") or []) or "-"
        log.debug("status: %s for %s", result.reason, short(authid))

    do_GET = do_HEAD = do_POST = _respond

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        pass  # one line per answer is logged by _respond at debug level


class StatusAnswerer:
    """A small HTTP server on 127.0.0.1:proxy.status_port, in its own thread."""

    def __init__(self, config: Config, stats: Stats | None = None) -> None:
        self.config = config
        self.server = _Server(config, ("127.0.0.1", config.proxy.status_port), stats)
        self.thread = threading.Thread(target=self._serve, name="status", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        self.server.ledger = Ledger.open(self.config.ledger_path)
        try:
            self.server.serve_forever(poll_interval=0.5)
        finally:
            self.server.ledger.close()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()  # waits for serve_forever: only when it runs
            self.thread.join(timeout=5)
        self.server.server_close()
