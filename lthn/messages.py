"""The message catalogue: every bus message type, declared once.

Frame 0 is the topic (dotted; subscribe to `payment.` with the dot), frame 1 a msgpack
map: {"v": version, "sender": "paymentd.1234", "seq": n, "ts": unix time, "data": {...}}.
The docstring of each class is what `lthn-tap --catalogue` and the README show.
Money is always an integer of atomic units.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar


class Message:
    topic: ClassVar[str]
    version: ClassVar[int]

    def fields(self) -> dict[str, Any]:
        # a shallow copy: every field is a scalar (field_types); asdict's deep copy cost
        # a tick charging hundreds of authids more than the outbox insert (#16)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def message(topic: str, version: int = 1) -> typing.Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls = dataclass(frozen=True)(cls)
        cls.topic = topic
        cls.version = version
        return cls
    return wrap


# --- payments (paymentd) ---

@message("payment.credited")
class PaymentCredited(Message):
    """A transfer was credited to an authid; published once per (txid, authid)."""
    authid: str
    txid: str
    amount: int
    confirmations: int
    height: int
    spendable: bool


@message("payment.confirmed")
class PaymentConfirmed(Message):
    """A credited transfer's confirmations changed (or it became spendable)."""
    authid: str
    txid: str
    confirmations: int
    height: int
    spendable: bool


@message("payment.revoked")
class PaymentRevoked(Message):
    """A credited transfer left the pool unmined or was double-spent; its credit is gone."""
    authid: str
    txid: str
    amount: int
    reason: str


@message("payment.rejected")
class PaymentRejected(Message):
    """A transfer was not credited (bad payment id, unknown service, zero amount)."""
    txid: str
    payment_id: str
    amount: int
    reason: str


@message("wallet.state")
class WalletState(Message):
    """paymentd's view of the wallet changed: up (with height) or down (with the error)."""
    up: bool
    height: int
    error: str


# --- access (authid state) ---

@message("authid.activated")
class AuthidActivated(Message):
    """An authid may now be used; authd admits it."""
    authid: str
    service_id: str
    balance: int


@message("authid.deactivated")
class AuthidDeactivated(Message):
    """An authid may no longer be used; authd refuses it and sessiond cuts its sessions."""
    authid: str
    reason: str


@message("authid.charged")
class AuthidCharged(Message):
    """Credit was spent for time (and later bytes); balance is what remains."""
    authid: str
    amount: int
    balance: int


# --- sessions (sessiond; kind is proxy or vpn, the kind's adapter owns cutting) ---

@message("session.opened")
class SessionOpened(Message):
    """A session of an authid started."""
    session_id: int
    kind: str
    authid: str
    source: str


@message("session.closed")
class SessionClosed(Message):
    """A session ended (reason: ended, cut, ...), with its byte counters."""
    session_id: int
    kind: str
    authid: str
    reason: str
    bytes_in: int
    bytes_out: int


@message("session.cut")
class SessionCut(Message):
    """Live connections of an authid were cut (count of connections closed)."""
    authid: str
    kind: str
    connections: int
    reason: str


@message("session.kill")
class SessionKill(Message):
    """Ask the adapter of `kind` to end an authid's live sessions now (sessiond -> lthn-vpnd
    for VPN clients), or only the one whose adapter ref is `ref` (empty: all of them); the
    adapter publishes session.cut once they are cut."""
    authid: str
    kind: str
    reason: str
    ref: str


# --- refusals (authd; firewalld bans from these) ---

@message("access.refused")
class AccessRefused(Message):
    """A client request was refused; reason is the X-LTHN-Status code."""
    reason: str
    source: str
    authid: str
    destination: str
    kind: str


# --- bans (firewalld owns them; enforcement at haproxy/OpenVPN/nftables is issue #17) ---

@message("ban.added")
class BanAdded(Message):
    """A source address or network is banned until expires (unix time); firewalld owns bans."""
    source: str
    reason: str
    expires: float
    count: int


@message("ban.lifted")
class BanLifted(Message):
    """A ban ended: it expired, or was lifted by hand (reason says which)."""
    source: str
    reason: str


# --- control ---

@message("control.resync")
class ControlResync(Message):
    """Ask daemons to rebuild derived state from the ledger (authd resyncs haproxy's map)."""
    reason: str


@message("node.heartbeat")
class NodeHeartbeat(Message):
    """A daemon process (its supervisord name: authd_0) is alive; sent every few seconds."""
    daemon: str
    pid: int


CATALOGUE: dict[str, type[Message]] = {
    cls.topic: cls for cls in (
        PaymentCredited, PaymentConfirmed, PaymentRevoked, PaymentRejected, WalletState,
        AuthidActivated, AuthidDeactivated, AuthidCharged,
        SessionOpened, SessionClosed, SessionCut, SessionKill,
        AccessRefused, BanAdded, BanLifted, ControlResync, NodeHeartbeat,
    )
}

_PY_TYPES = {"str": str, "int": int, "bool": bool, "float": float}


def field_types(cls: type[Message]) -> dict[str, type]:
    return {f.name: _PY_TYPES[f.type] if isinstance(f.type, str) else f.type
            for f in dataclasses.fields(cls)}


class BadMessage(ValueError):
    """A message that does not match the catalogue; the text says why."""


def build(cls: type[Message], data: Any) -> Message:
    """Check a received `data` map against the declaration and build the message."""
    if not isinstance(data, dict):
        raise BadMessage("data is not a map")
    values = {}
    for name, kind in field_types(cls).items():
        if name not in data:
            raise BadMessage(f"missing field {name}")
        value = data[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise BadMessage(f"field {name} must be {kind.__name__}")
        values[name] = value
    return cls(**values)
