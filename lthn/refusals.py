"""Every refusal and failure the node answers or logs, declared once (issues #13, #15).

Each row is an `X-LTHN-Status` code with its HTTP status, the one line a client reads in
the body, and what kind of event it is for firewalld. haproxy's deny rules and bodies,
its answers to squid's refusals and failures and to its own (services/proxy/
haproxy_config.py), authd's status answer and refusal events, and firewalld all read it;
README's table is printed from it (`python -m lthn.reference refusals`). To add or reword
a refusal, change its row here.

Codes are Lethean's where Lethean has one (NO_PAYMENT, BAD_ID, OVERLIMIT; see
notes/lethean-protocol.md): a deployed client acts on the status and the code only.
"""

from __future__ import annotations

from enum import Enum

HEADER = "X-LTHN-Status"  # the response header that carries the code
# The code of a status answer that admits (HTTP 200): not a refusal.
OK = "OK"


class RefusalKind(Enum):
    """What a refusal says about the source that caused it, for firewalld."""

    NOT_PAID = "not yet paid"
    BAD_AUTHID = "bad authid"
    DESTINATION_PROBE = "destination probe"
    BAD_REQUEST = "bad request"
    OVERLIMIT = "overlimit"
    REFUSED_SOURCE = "refused source"
    NODE_FAULT = "node fault"
    DESTINATION_FAILURE = "destination failure"

    @property
    def may_ban(self) -> bool:
        """Can events of this kind count toward banning their source?

        Never for NOT_PAID: a client waiting for its payment polls with its unpaid authid
        for up to 30 minutes (issue #17). Never for a source already refused (it would
        ban itself longer and longer), nor for the node's own failures, nor for a
        destination that failed (a name that does not resolve is a typo, not an attack).
        """
        return self in (RefusalKind.BAD_AUTHID, RefusalKind.DESTINATION_PROBE,
                        RefusalKind.BAD_REQUEST, RefusalKind.OVERLIMIT)


class Refusal(Enum):
    """A refusal: its name is the `X-LTHN-Status` code sent with it."""

    BAD_METHOD = (403, "Access denied: this method is not allowed.", RefusalKind.BAD_REQUEST,
                  "The request's method is not a standard HTTP method.")
    NO_PAYMENT = (403, "Access denied: no active payment for this authid.",
                  RefusalKind.NOT_PAID,
                  "No payment header, or its authid is not paid (yet, or any more). The "
                  "client keeps polling the status URL until it is.")
    BAD_AUTHID = (403, "Access denied: the payment header is malformed.",
                  RefusalKind.BAD_AUTHID,
                  "The payment header is not 16 hex characters, or names two different "
                  "authids.")
    DENY_DESTINATION = (403, "Access denied: this destination is not allowed.",
                        RefusalKind.DESTINATION_PROBE,
                        "The destination is the node, a private or special network, a "
                        "denied domain or a port not allowed (haproxy checks before, squid "
                        "after name resolution).")
    BAD_PASSWORD = (403, "Access denied: the password is not the authid.",
                    RefusalKind.BAD_AUTHID,
                    "VPN login only: the password line is not the username's authid (the "
                    "Lethean client writes the authid on both lines).")
    DENY_PORT = (403, "Access denied: this port is not allowed.", RefusalKind.DESTINATION_PROBE,
                 "Plain HTTP to a port outside `proxy.http_ports`, or CONNECT to one outside "
                 "`proxy.connect_ports` (haproxy checks before any name lookup, squid again).")
    BAD_HOST = (400, "Bad request: the destination is not a valid host name.",
                RefusalKind.BAD_REQUEST,
                "A destination name over 253 characters or with a label over 63, refused at "
                "once, never looked up.")
    BAD_REQUEST = (400, "Bad request: the node cannot read this request.",
                   RefusalKind.BAD_REQUEST,
                   "squid found the request invalid. A request haproxy cannot parse, or one "
                   "not complete within 10 s, is logged with this code and closed without "
                   "an answer (haproxy 2.6 cannot put this header in its own 400 and 408).")
    BAD_TLS = (0, "No answer: the TLS handshake failed.", RefusalKind.BAD_REQUEST,
               "A connection to the proxy port that did not complete its TLS handshake "
               "(logged, no HTTP answer is possible).")
    DNS_FAILURE = (502, "Bad gateway: the destination name could not be resolved.",
                   RefusalKind.DESTINATION_FAILURE,
                   "squid could not resolve the destination's name (it does not exist, or "
                   "the resolver failed).")
    CONNECT_FAILED = (502, "Bad gateway: the destination could not be reached.",
                      RefusalKind.DESTINATION_FAILURE,
                      "squid could not connect to the destination (refused, unreachable).")
    DESTINATION_TIMEOUT = (504, "Gateway timeout: the destination did not answer in time.",
                           RefusalKind.DESTINATION_FAILURE,
                           "The destination accepted the connection but did not answer in "
                           "time.")
    DESTINATION_ERROR = (502, "Bad gateway: the destination's answer was invalid or cut "
                              "short.", RefusalKind.DESTINATION_FAILURE,
                         "The destination's answer could not be read or was empty.")
    UNAVAILABLE = (503, "Service unavailable: the node cannot fetch right now; try again.",
                   RefusalKind.NODE_FAULT,
                   "haproxy could not reach squid (restarting, overloaded) or squid is "
                   "shutting down.")
    PROXY_ERROR = (500, "The node failed to handle this request.", RefusalKind.NODE_FAULT,
                   "squid or haproxy failed in a way not listed above.")
    BAD_ID = (503, "Wrong provider id.", RefusalKind.BAD_REQUEST,
              "A status request named another provider (`X-LTHN-MgmtID`); the client "
              "gives up.")
    CONNECTION_ERROR = (503, "Status unavailable.", RefusalKind.NODE_FAULT,
                        "authd failed to answer a status request; the client gives up. "
                        "Also a VPN login vpnd could not decide (the ledger failed).")
    DENY_SRC_IP = (403, "Access denied: this source address is not allowed.",
                   RefusalKind.REFUSED_SOURCE,
                   "The source address is in the operator's deny list (`src_deny.ips`), or "
                   "not in a non-empty allow list (`src_allow.ips`).")
    OVERLIMIT = (429, "Too many connections or requests from this address.",
                 RefusalKind.OVERLIMIT,
                 "The source address is over a per-source limit (concurrent connections, "
                 "connection or request rate) in haproxy.")
    BANNED = (403, "Access denied: this address is banned for a while.",
              RefusalKind.REFUSED_SOURCE,
              "The source address is banned until its ban expires (firewalld, or "
              "`lthnctl ban add`).")

    def __init__(self, http_status: int, text: str, kind: RefusalKind, doc: str) -> None:
        self.http_status = http_status  # 0: no HTTP answer is possible (BAD_TLS)
        self.text = text       # one line, no newline; the body is this plus "\n"
        self.kind = kind
        self.doc = doc         # for operators: when it is answered

    @property
    def code(self) -> str:
        """The `X-LTHN-Status` value (and the reason in haproxy's request log)."""
        return self.name

    @property
    def body(self) -> bytes:
        return self.text.encode() + b"\n"

    @classmethod
    def of(cls, code: str) -> Refusal | None:
        """The refusal a code names, or None for a code this node does not use."""
        return cls.__members__.get(code)


def reference_table() -> str:
    """README's table of refusals (Markdown)."""
    rows = ["| `X-LTHN-Status` | HTTP | body | for firewalld | when |",
            "| --- | --- | --- | --- | --- |"]
    for r in Refusal:
        kind = r.kind.value if r.kind.may_ban else f"{r.kind.value} (never bans)"
        status = r.http_status or "none"
        rows.append(f"| `{r.code}` | {status} | {r.text} | {kind} | {r.doc} |")
    return "\n".join(rows) + "\n"
