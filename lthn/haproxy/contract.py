"""What the node's haproxy config promises the daemons that read haproxy (issues #13, #16).

services/proxy/haproxy_config.py renders these into haproxy.cfg (tests/fixtures/
mini_proxy.py into its test haproxy); authd (the authid map, the refusal log), sessiond
(the two stick tables) and lthn/haproxy/request_log.py (the log line) rely on them. Each
is written here only, so the two sides cannot drift apart. docs/design.md says how they
are used.

Admitted requests cost no daemon any work (#16): haproxy keeps what sessiond needs in its
own stick tables, which sessiond reads when it ticks or cuts, and it logs only refusals.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lthn.refusals import Refusal, RefusalKind

if TYPE_CHECKING:  # lthn.config reads admin_socket_path from here
    from lthn.config import Config

# the stick table (a backend of this name) that tracks every admitted request by authid
# (track-sc0); `conn_cur > 0` means the authid has a live stream. An entry expires
# `session_expiry` after its last stream ended, so `show table` lists the authids live now
# or busy lately, not every authid ever admitted (#16)
STICK_TABLE = "authid_sessions"
# gpt0: the time (unix seconds) of the entry's last admitted request, so sessiond lists
# only the entries with requests since its last look, and those without a live stream,
# not every live one each tick (#16)
STICK_TABLE_STORE = "conn_cur,gpt0,bytes_in_cnt,bytes_out_cnt,http_req_cnt"

# the stick table of live client connections per authid (track-sc1): key
# `<AUTHID>/<client ip>:<client port>`, `conn_cur` = that connection's live streams (an
# open CONNECT tunnel is one). sessiond reads `show table authid_streams data.conn_cur gt
# 0` to find the streams to cut; haproxy fills it and forgets closed connections itself,
# so nothing is lost when sessiond restarts (#14). sc2 is left for per-source tracking.
STREAM_TABLE = "authid_streams"
STREAM_KEY_SEPARATOR = "/"
STREAM_KEY_LEN = 64      # 16 + "/" + the longest IPv6 text (39) + ":" + 5 digits = 62
STREAM_EXPIRY_SECONDS = 10
STREAM_KEY_VAR = "txn.lthn_stream"
# the key's client half (`/<client ip>:<client port>`), made once per connection: a
# keep-alive connection's requests join it to their authid with one converter instead of
# formatting the whole key each (#16: 3.1k of haproxy's 104k instructions per GET)
STREAM_CLIENT_VAR = "sess.lthn_client"

# one raw datagram per refused request (`option logasap`), no syslog header:
#   LTHN1 <client ip> <client port> <authid|-> <reason|-> <status> <method> <destination>
# Admitted requests are not logged (`set-log-level silent`); a refusal answered on the
# response side (squid's destination refusal) turns logging back on (#16).
LOG_TAG = "LTHN1"
LOG_FORMAT = f"{LOG_TAG} %ci %cp %[var(txn.authid)] %[var(txn.reason)] %ST %HM %[var(txn.dest)]"
# the same line for what never became a request (haproxy's `error-log-format`): a failed
# TLS handshake (BAD_TLS, status 0) or a request haproxy could not parse or that was not
# complete in time (BAD_REQUEST, status 400 or 408); no authid, method or destination
ERROR_LOG_FORMAT = (f"{LOG_TAG} %ci %cp - "
                    f"%[fc_err,bool,iif({Refusal.BAD_TLS.code},{Refusal.BAD_REQUEST.code})] "
                    "%ST - -")
LOG_HOST = "127.0.0.1"
LOG_DATAGRAM_LEN = 4096   # haproxy truncates a longer line


def session_expiry(config: Config) -> int:
    """Seconds an idle `authid_sessions` entry is kept: long enough that sessiond, polling
    every `sessions.tick`, sees a request that came and went between two polls."""
    return max(10, int(3 * config.sessions.tick) + 1)


def stick_table_definition(config: Config) -> str:
    return (f"stick-table type string len 16 size 1m expire {session_expiry(config)}s "
            f"store {STICK_TABLE_STORE}")


def stream_table_definition() -> str:
    return (f"stick-table type string len {STREAM_KEY_LEN} size 1m "
            f"expire {STREAM_EXPIRY_SECONDS}s store conn_cur")


# an admitted request is not logged (no datagram, no daemon woken)
SILENT_RULE = "http-request set-log-level silent"


def connection_rules() -> list[str]:
    """The `tcp-request session` lines every front end with `admitted_rules` needs, after
    any that set the client's address (PROXY protocol): the stream key's client half."""
    return [f'tcp-request session set-var-fmt({STREAM_CLIENT_VAR}) '
            f'"{STREAM_KEY_SEPARATOR}%[src]:%[src_port]"']


def admitted_rules(authid_var: str = "txn.authid") -> list[str]:
    """The `http-request` lines for a request that passed every check: track it by authid
    and by client connection, and log nothing (no datagram, no daemon woken)."""
    return [
        f"http-request track-sc0 var({authid_var}) table {STICK_TABLE}",
        "http-request sc-set-gpt0(0) date",
        f"http-request set-var({STREAM_KEY_VAR}) var({authid_var}),"
        f"concat(,{STREAM_CLIENT_VAR})",
        f"http-request track-sc1 var({STREAM_KEY_VAR}) table {STREAM_TABLE}",
        SILENT_RULE,
    ]


def refusal_log_port(config: Config) -> int:
    """Where the request log (refusals only) reaches authd, which publishes them."""
    return config.proxy.log_port


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


# --- per source address: limits, offences, lists and bans (issue #17) ---

# every connection is tracked by its real source address (after the PROXY protocol of a
# named front proxy, never X-Forwarded-For) in this table, on sticky counter 2
SOURCE_TABLE = "lthn_sources"
SOURCE_COUNTER = 2
# gpc array slots counting a source's offences in the window (`gpc_rate`): slot 0 is every
# offence (so `show table ... data.gpc_rate ge N` filters on it: haproxy 2.6 filters on an
# array's first slot only), the others one refusal kind each. NO_PAYMENT counts nowhere.
OFFENCE_SLOTS: dict[RefusalKind, int] = {
    RefusalKind.BAD_AUTHID: 1,
    RefusalKind.DESTINATION_PROBE: 2,
    RefusalKind.BAD_REQUEST: 3,
    RefusalKind.OVERLIMIT: 4,
    RefusalKind.REFUSED_SOURCE: 5,   # counted (banned, denied), never an offence
}
OFFENCE_TOTAL_SLOT = 0
OFFENCE_SLOT_COUNT = 1 + len(OFFENCE_SLOTS)
# the refusal kinds that count toward a ban (RefusalKind.may_ban), in the order named
BANNING_KINDS = tuple(k for k in RefusalKind if k.may_ban)


def offence_thresholds(config: Config) -> dict[RefusalKind, int]:
    """Offences of each kind within `firewall.refusal_window` that ban their source. haproxy
    refuses such a source itself (BANNED) from the next request on, and firewalld, reading
    the same counters, makes it a ban with its time and count; firewalld then sets slot 0
    back to zero, which ends haproxy's own refusal (the ban map holds the ban from there)."""
    f = config.firewall
    return {kind: f.overlimit_threshold if kind is RefusalKind.OVERLIMIT
            else f.refusal_threshold for kind in BANNING_KINDS}


def source_table_definition(config: Config) -> str:
    f = config.firewall
    window_ms = int(f.refusal_window * 1000)
    period_ms = int(f.limit_period * 1000)
    # kept a while past the longer period, so a quiet source's rates can fall to zero
    expire = int(max(f.refusal_window, f.limit_period) * 2) + 1
    return (f"stick-table type ipv6 size 1m expire {expire}s store conn_cur,"
            f"conn_rate({period_ms}),http_req_rate({period_ms}),"
            f"gpc({OFFENCE_SLOT_COUNT}),gpc_rate({OFFENCE_SLOT_COUNT},{window_ms})")


def bans_map_path(config: Config) -> Path:
    """Runtime map of bans: `ADDRESS-OR-CIDR EXPIRES` (unix seconds); haproxy refuses a
    source whose entry is still in the future (so a ban ends on time even without
    firewalld). Written from the ledger before haproxy starts, kept by firewalld."""
    return config.state / "run" / "bans.map"


def source_acl_path(config: Config, name: str) -> Path:
    """Runtime ACL files firewalld keeps equal to the operator's lists (`add acl`, or a
    `prepare acl` / `commit acl` swap): see FIREWALL_ACLS."""
    return config.state / "run" / f"{name}.acl"


# name -> what its runtime ACL file holds
FIREWALL_ACLS = {
    "src_deny": "the source deny list",
    "src_allow": "the source allow list, or 0.0.0.0/0 and ::/0 when it is empty",
    "ban_exempt": "the allow list's own entries (never banned)",
    "dst_deny_ips": "the destination deny list of addresses",
    "dst_deny_domains": "the destination deny list of domains (exact match)",
    "dst_deny_subdomains": "the same domains with a leading dot (subdomains, `-m end`)",
}
