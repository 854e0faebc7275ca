"""The VPN login decision: may this username/password from this address use the tunnel?

The same rules as proxy admission (issues #17, #18): first the source address, by the
decision haproxy's rules make (lthn/source_policy.py: not in the operator's deny list, in
the allow list when that is not empty, not banned unless exempt), whatever the client
sent; then the username is an authid (16 hex characters, any case; the Lethean client
sends it upper-case on both lines), the password is the same authid, and the ledger calls
the authid ACTIVE for a service of type vpn. Pure: the source rules and the ledger are
asked through two callables.

What the client sent is checked here before anything else looks at it, and never goes
back to OpenVPN: the refusal reason a client sees is one of the codes below, and the
detail (for the log) shows the username with `repr` (no control characters, at most 40).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from lthn.access import State
from lthn.authid import AUTHID, short
from lthn.config import Config
from lthn.ledger import AuthidRow
from lthn.refusals import Refusal

MAX_CREDENTIAL = 256   # characters; an authid has 16, anything far longer is an attack

# what a refused client sees (AUTH_FAILED,<code>) and `access.refused` carries: codes of
# the one refusal catalogue (lthn/refusals.py), so firewalld weighs them as the proxy's
BAD_AUTHID = Refusal.BAD_AUTHID.code       # the username is not an authid, or OpenVPN's
                                           # block for the login was not whole
BAD_PASSWORD = Refusal.BAD_PASSWORD.code   # the password is not the username's authid
BANNED = Refusal.BANNED.code               # the source address is banned (firewalld)
DENY_SRC_IP = Refusal.DENY_SRC_IP.code     # the source address is in the operator's deny
                                           # list, or not in a non-empty allow list
NO_PAYMENT = Refusal.NO_PAYMENT.code       # unknown, not (yet, any more) paid, not vpn
NODE_FAULT = Refusal.CONNECTION_ERROR.code  # the node could not decide (the ledger failed)
REASONS = (BAD_AUTHID, BAD_PASSWORD, BANNED, DENY_SRC_IP, NO_PAYMENT, NODE_FAULT)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""     # one of REASONS when refused
    authid: str = ""     # the canonical authid, "" when the username is not one
    detail: str = ""     # for the log; never the password

    @property
    def verdict(self) -> str:
        return "admitted" if self.allowed else f"refused {self.reason}"


def _shown(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def decide(config: Config, username: str | None, password: str | None, source: str,
           row_of: Callable[[str], AuthidRow | None],
           source_refusal: Callable[[str], tuple[Refusal, str] | None],
           problem: str = "") -> Decision:
    """The decision for one login (CONNECT or REAUTH). `source_refusal(source)`: the
    refusal of the source and why, or None (services/vpn/source_rules.py)."""
    if source:
        # before anything the client sent, as haproxy refuses a source before reading a
        # request: a refused source's logins never count as bad authids toward a ban
        refused = source_refusal(source)
        if refused is not None:
            refusal, why = refused
            return Decision(False, refusal.code, detail=why)
    if problem:
        return Decision(False, BAD_AUTHID, detail=f"malformed login ({problem})")
    if not username:
        return Decision(False, BAD_AUTHID, detail="no username")
    if len(username) > MAX_CREDENTIAL or not AUTHID.match(username):
        return Decision(False, BAD_AUTHID, detail=f"username {_shown(username)} is not an "
                        "authid")
    authid = username.upper()
    if password is None or len(password) > MAX_CREDENTIAL or not hmac.compare_digest(
            password.upper().encode("utf-8", "replace"), authid.encode()):
        return Decision(False, BAD_PASSWORD, authid, "the password is not the authid")
    row = row_of(authid)
    if row is None:
        return Decision(False, NO_PAYMENT, authid, f"authid {short(authid)} is unknown")
    service = config.service(row.service_id)
    if service is None:
        return Decision(False, NO_PAYMENT, authid,
                        f"service {row.service_id} is not offered by this node")
    if service.type != "vpn":
        return Decision(False, NO_PAYMENT, authid,
                        f"service {service.key} is a {service.type} service, not vpn")
    if row.state != State.ACTIVE.value:
        return Decision(False, NO_PAYMENT, authid,
                        f"authid {short(authid)} is not active ({row.state})")
    return Decision(True, "", authid, f"authid {short(authid)} is active")
