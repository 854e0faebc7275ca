"""The request catalogue: every request a daemon answers on its control endpoint, declared
once with its reply (issue #19).

Besides pub/sub, each daemon process answers requests on a ZeroMQ ROUTER socket of its own
(`lthn.control`): lthnctl asks, the daemon answers from its memory, or changes money,
access, sessions or bans in one ledger transaction with its audit line. Like bus messages
(`lthn.messages`) a request is a name, a version and typed fields, and so is its reply;
decoding is strict both ways (unknown name, wrong version, missing or mistyped field: an
error reply, never a crash).

Wire format, one msgpack map per ZeroMQ message (after the ROUTER's envelope):
  request  {"req": name, "v": version, "sender": "lthnctl.1234", "user": unix user,
            "data": {...}}
  reply    {"ok": true, "v": reply version, "data": {...}}
           {"ok": false, "code": "unknown" | "malformed" | "refused" | "failed",
            "error": one line}
Money is an integer of atomic units; times are unix seconds (floats).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

MAX_BYTES = 1 << 20   # a request or reply over this is refused unread

# what the wire carries for each declared field type (msgpack maps and arrays are
# checked for their outer type only: their contents are documented per field)
_PY_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "float": float,
                              "dict": dict, "list": list}


class Reply:
    version: ClassVar[int]

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class Request:
    name: ClassVar[str]
    version: ClassVar[int]
    reply: ClassVar[type[Reply]]

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def reply(version: int = 1) -> typing.Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls = dataclass(frozen=True)(cls)
        cls.version = version
        return cls
    return wrap


def request(name: str, answer: type[Reply], version: int = 1) -> typing.Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls = dataclass(frozen=True)(cls)
        cls.name = name
        cls.version = version
        cls.reply = answer
        return cls
    return wrap


# --- replies ---

@reply()
class DaemonInfo(Reply):
    """Who answered and how it is: `details` holds what the daemon adds (paymentd: wallet
    state, height and scan height; sessiond: open sessions; ...)."""
    daemon: str       # program name: authd
    process: str      # supervisord process name: authd_0
    pid: int
    software: str     # the node software's version
    started: float    # unix time the process started
    details: dict


@reply()
class LevelSet(Reply):
    """The log level before and after."""
    previous: str
    level: str


@reply()
class Done(Reply):
    """What was done, in one line."""
    detail: str


@reply()
class AuthidChanged(Reply):
    """An authid after a manual change (state and money in atomic units)."""
    authid: str
    state: str
    credit: int
    spent: int
    balance: int
    changed: bool     # False when there was nothing to do (already in that state)


@reply()
class SessionKilled(Reply):
    """A session's authid and how many of its live connections were cut."""
    session_id: int
    authid: str
    kind: str
    connections: int


@reply()
class BanChanged(Reply):
    """A ban after `ban add` / `ban del`; `expires` is unix time (0 when lifted)."""
    address: str
    reason: str
    expires: float
    changed: bool     # False: ban del of an address not banned


@reply()
class Heartbeats(Reply):
    """The last heartbeat watchd received from each daemon process: a list of maps
    {"daemon", "process", "pid", "sender", "last_seen", "age"}; `interval` is how often
    daemons send them."""
    interval: float
    daemons: list


@reply()
class DaemonMetrics(Reply):
    """A daemon's own counters for Prometheus: {"counters": {name: {label text: value}},
    "gauges": {...}, "histograms": {name: {label text: {"buckets": [[le, count], ...],
    "sum": s, "count": n}}}}; label text is "key=value,key=value"."""
    metrics: dict


# --- requests every daemon answers ---

@request("daemon.status", DaemonInfo)
class DaemonStatus(Request):
    """Who the daemon is, since when, and daemon-specific details (lthnctl status)."""


@request("daemon.loglevel", LevelSet)
class SetLogLevel(Request):
    """Set the process's log level until it restarts (debug, info, warning, error)."""
    level: str


@request("daemon.refresh", Done)
class Refresh(Request):
    """Do now what a timer would do soon: paymentd polls the wallet, sessiond reconciles
    sessions and charges, authd resyncs haproxy's map."""


@request("daemon.metrics", DaemonMetrics)
class GetMetrics(Request):
    """The daemon's own counters and histograms, for watchd's Prometheus endpoint."""


# --- money and access: each answered only by the daemon that owns it ---

@request("credit.topup", AuthidChanged)
class Topup(Request):
    """paymentd: add credit by hand (atomic units), audited with the reason; the credit
    rules then decide activation as for a payment."""
    authid: str
    amount: int
    reason: str


@request("credit.spend", AuthidChanged)
class Spend(Request):
    """sessiond: take credit by hand (atomic units, at most the balance), audited; an
    authid whose balance can no longer pay is deactivated."""
    authid: str
    amount: int
    reason: str


@request("access.grant", AuthidChanged)
class Grant(Request):
    """paymentd: admit an authid by hand, with `amount` of credit (0: the service's first
    prepaid minutes), whatever its payments; audited with the reason."""
    authid: str
    amount: int
    reason: str


@request("access.revoke", AuthidChanged)
class Revoke(Request):
    """sessiond: refuse an authid by hand and cut its sessions; it stays refused (state
    REVOKED) until `authid grant`, whatever it pays; audited with the reason."""
    authid: str
    reason: str


@request("session.kill", SessionKilled)
class KillSession(Request):
    """sessiond: cut an open session's live connections now (the authid stays active)."""
    session_id: int
    reason: str


@request("ban.add", BanChanged)
class AddBan(Request):
    """firewalld: ban a source address or network for `seconds`; stored in the ledger and
    published as `ban.added`."""
    address: str
    seconds: float
    reason: str


@request("ban.lift", BanChanged)
class LiftBan(Request):
    """firewalld: lift a ban now; published as `ban.lifted`."""
    address: str
    reason: str


# --- watchd ---

@request("watchd.heartbeats", Heartbeats)
class GetHeartbeats(Request):
    """watchd: the last heartbeat of every daemon process it has heard."""


CATALOGUE: dict[str, type[Request]] = {
    cls.name: cls for cls in (
        DaemonStatus, SetLogLevel, Refresh, GetMetrics,
        Topup, Spend, Grant, Revoke, KillSession, AddBan, LiftBan,
        GetHeartbeats,
    )
}


class BadRequest(ValueError):
    """A request or reply that does not match the catalogue; the text says why."""


def field_types(cls: type) -> dict[str, type]:
    return {f.name: _PY_TYPES[f.type] if isinstance(f.type, str) else f.type
            for f in dataclasses.fields(cls)}


def build(cls: type, data: Any) -> Any:
    """Check a received `data` map against the declaration of `cls` and build it."""
    if not isinstance(data, dict):
        raise BadRequest("data is not a map")
    types = field_types(cls)
    extra = sorted(str(k) for k in data if k not in types)
    if extra:
        raise BadRequest(f"unknown field {extra[0][:40]}")
    values = {}
    for name, kind in types.items():
        if name not in data:
            raise BadRequest(f"missing field {name}")
        value = data[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise BadRequest(f"field {name} must be {kind.__name__}")
        values[name] = value
    return cls(**values)
