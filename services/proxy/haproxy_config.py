"""Renders haproxy.cfg from the node config: the TLS front end every proxy client talks to.

What the generated config does, in rule order (docs/design.md, issues #4 and #10); every
refusal answers its row of lthn/refusals.py (status, `X-LTHN-Status`, one-line body):
1. non-standard method -> 403 BAD_METHOD;
2. no payment header -> 403 NO_PAYMENT; several different values or not 16 hex -> 403
   BAD_AUTHID (`X-LTHN-PaymentID`, legacy `X-ITNS-PaymentID`, case-insensitive, upper-cased);
3. the status request (host `_remote_` / `remote.lethean`, path `/status...`) -> authd;
4. authid not in the runtime map (`contract.authid_map_path`) -> 403 NO_PAYMENT;
5. squid-internal URLs, IP literals in denied ranges, CONNECT to other ports -> 403
   DENY_DESTINATION (squid checks again after name resolution);
6. every X-LTHN-* / X-ITNS-* header removed, the authid tracked in the stick table,
   the request forwarded to squid; squid's own destination refusal becomes DENY_DESTINATION.
Admitted requests are tracked in haproxy's stick tables (by authid, and by client
connection so sessiond can find the streams to cut) and not logged: they cost no daemon
any work (#16). Every refusal is logged at once (`option logasap`) as one raw datagram in
the format lthn/haproxy/request_log.py parses, to authd. What other daemons rely on
(tables, log format and port, map, admin socket) is named in lthn/haproxy/contract.py,
not here.
"""

from __future__ import annotations

from lthn import refusals
from lthn.config import Config
from lthn.haproxy import contract
from lthn.haproxy.contract import authid_map_path
from lthn.refusals import Refusal
from services.proxy import destinations, squid_config

STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                    "PATCH")
STATUS_HOSTS = ("_remote_", "remote.lethean")

def backend_address(config: Config) -> str:
    return f"127.0.0.1:{config.proxy.squid_port}" if config.proxy.backend == "squid" \
        else config.proxy.backend


def _refuse(refusal: Refusal, condition: str, rule: str = "http-request") -> list[str]:
    """Remember the reason for the log line, count it against the source (an offence
    when its kind may ban, #17), then answer with it. A refusal of a response logs again:
    its request was admitted, and admitted requests are not logged."""
    log_again = [f"    {rule} set-log-level info if {condition}"] \
        if rule == "http-response" else []
    sc = contract.SOURCE_COUNTER
    counts = [f"    {rule} sc-inc-gpc({contract.OFFENCE_SLOTS[refusal.kind]},{sc}) "
              f"if {condition}"] if refusal.kind in contract.OFFENCE_SLOTS else []
    if refusal.kind.may_ban:
        counts.append(f"    {rule} sc-inc-gpc({contract.OFFENCE_TOTAL_SLOT},{sc}) "
                      f"if {condition}")
    return [
        *counts,
        f"    {rule} set-var(txn.reason) str({refusal.code}) if {condition}",
        *log_again,
        f"    {rule} return status {refusal.http_status} content-type text/plain "
        f'string "{refusal.text}\\n" hdr {refusals.HEADER} {refusal.code} if {condition}',
    ]


def _destination_rules(config: Config, own: list[str] | None) -> list[str]:
    """Rules 5: refuse what is refused without resolving names (squid does the rest)."""
    lines = [
        "    # --- destinations (issue #10): squid checks again after name resolution ---",
        "    acl squid_internal path_beg -i /squid-internal-",
        "    acl squid_internal url_beg -i cache_object:",
        "    acl dest_denied_ip var(txn.dhost) -m ip "
        + " ".join(destinations.denied_networks(config, own)),
        "    # all-numeric hosts that are not plain addresses (127.1, 2130706433, 0x7f.1):",
        "    # resolvers disagree on them, so they are refused rather than guessed",
        "    acl dest_numeric var(txn.dhost) -m reg -i "
        "^(0x[0-9a-f]+|[0-9]+)([.](0x[0-9a-f]+|[0-9]+))*$",
        "    acl dest_is_ip var(txn.dhost) -m ip 0.0.0.0/0 ::/0",
        "    acl connect_port var(txn.dport) -m int "
        + " ".join(str(p) for p in destinations.connect_ports(config)),
    ]
    domains = destinations.denied_domains(config)
    if domains:
        lines.append("    acl dest_denied_domain var(txn.dhost) -i -m str " + " ".join(domains))
        lines.append("    acl dest_denied_domain var(txn.dhost) -i -m end "
                     + " ".join("." + d for d in domains))
    for i, exc in enumerate(destinations.exceptions(config)):
        match = f"-i -m str {exc.host}" if exc.is_name else f"-m ip {exc.network}"
        lines += [
            f"    acl exception_{i}_host var(txn.dhost) {match}",
            f"    acl exception_{i}_port var(txn.dport) -m int {exc.port}",
            f"    http-request set-var(txn.excepted) bool(true) "
            f"if exception_{i}_host exception_{i}_port",
        ]
    lines += [
        "    # the operator's dst_deny.ips / dst_deny.doms, kept by firewalld (issue #17)",
        "    acl dest_denied_file_ip var(txn.dhost) -m ip -f "
        f"{contract.source_acl_path(config, 'dst_deny_ips')}",
        "    acl dest_denied_file_domain var(txn.dhost) -i -m str -f "
        f"{contract.source_acl_path(config, 'dst_deny_domains')}",
        "    acl dest_denied_file_domain var(txn.dhost) -i -m end -f "
        f"{contract.source_acl_path(config, 'dst_deny_subdomains')}",
    ]
    lines.append("    acl excepted var(txn.excepted) -m bool")
    deny = Refusal.DENY_DESTINATION
    lines += _refuse(deny, "squid_internal")
    lines += _refuse(deny, "dest_denied_ip !excepted")
    # the deny files win over allow_destinations: they are the operator's "block it now"
    lines += _refuse(deny, "dest_denied_file_ip")
    lines += _refuse(deny, "dest_denied_file_domain")
    lines += _refuse(deny, "dest_numeric !dest_is_ip")
    if domains:
        lines += _refuse(deny, "dest_denied_domain !excepted")
    lines += _refuse(deny, "METH_CONNECT !connect_port !excepted")
    return lines


def _offender_acls(config: Config) -> list[str]:
    """A source over a ban threshold is refused by haproxy itself from its next request
    on, whatever firewalld's latency; firewalld then makes it a ban (contract.
    offence_thresholds). Slot 0 (every offence) gates it: firewalld zeroes it when it bans,
    so an ended ban is not renewed here by offences it already punished."""
    sc = contract.SOURCE_COUNTER
    thresholds = contract.offence_thresholds(config)
    lines = [f"    acl offences_over sc_gpc_rate({contract.OFFENCE_TOTAL_SLOT},{sc}) ge "
             f"{min(thresholds.values())}"]
    for kind, threshold in thresholds.items():
        lines.append(f"    acl offences_{kind.name.lower()} "
                     f"sc_gpc_rate({contract.OFFENCE_SLOTS[kind]},{sc}) ge {threshold}")
    return lines


def _banned_rules(config: Config) -> list[str]:
    """BANNED: in the ban map, or over a threshold (never the never-ban list nor the
    allow list's own entries)."""
    over = " || ".join(["src_banned"] + [f"offences_over offences_{kind.name.lower()}"
                                         for kind in contract.offence_thresholds(config)])
    return [f"    http-request set-var(txn.banned) bool(true) if {over}",
            "    acl banned var(txn.banned) -m bool",
            "    # a banned source is not logged per request: its ban was (one line per ban)",
            "    http-request set-log-level silent if banned !never_ban !ban_exempt",
            *_refuse(Refusal.BANNED, "banned !never_ban !ban_exempt")]


def _source_rules(config: Config) -> list[str]:
    """The source address first (#17): bans, the operator's lists, per-source limits.
    Checked before anything else, so a banned or denied source costs the least."""
    f = config.firewall
    acl = lambda name: contract.source_acl_path(config, name)  # noqa: E731
    lines = ["    # --- the source address (issue #17): bans, lists, per-source limits ---"]
    if f.front_proxies:
        lines += [
            "    # the operator's front proxies say who the client is (PROXY protocol);",
            "    # nobody else may, and X-Forwarded-For / CF-Connecting-IP are never read",
            "    acl front_proxy src " + " ".join(f.front_proxies),
            "    tcp-request connection expect-proxy layer4 if front_proxy",
        ]
    lines += [
        f"    tcp-request session track-sc{contract.SOURCE_COUNTER} src "
        f"table {contract.SOURCE_TABLE}",
        "    http-request set-var(txn.now) date",
        f"    acl never_ban src {' '.join(f.never_ban)}" if f.never_ban
        else "    acl never_ban always_false",
        f"    acl ban_exempt src -f {acl('ban_exempt')}",
        f"    acl src_banned src,map_ip_int({contract.bans_map_path(config)},0),sub(txn.now) "
        "gt 0",
        *_offender_acls(config),
        *_banned_rules(config),
        f"    acl src_denied src -f {acl('src_deny')}",
        f"    acl src_allowed src -f {acl('src_allow')}",
        *_refuse(Refusal.DENY_SRC_IP, "src_denied || !src_allowed"),
    ]
    sc = contract.SOURCE_COUNTER
    limits = [(f.max_connections, f"sc{sc}_conn_cur", "over_connections"),
              (f.max_connection_rate, f"sc{sc}_conn_rate", "over_connection_rate"),
              (f.max_request_rate, f"sc{sc}_http_req_rate", "over_request_rate")]
    names = []
    for limit, fetch, name in limits:
        if limit:
            lines.append(f"    acl {name} {fetch} gt {limit}")
            names.append(name)
    if names:
        lines += _refuse(Refusal.OVERLIMIT, " || ".join(f"!never_ban {n}" for n in names))
    return lines


def render(config: Config, own_addresses: list[str] | None = None) -> str:
    """The whole haproxy.cfg. `own_addresses` defaults to the node's interface addresses."""
    p = config.proxy
    methods = " ".join(STANDARD_METHODS)
    lines = [
        "# Generated by lthn-haproxy from " + (config.source or "the node config")
        + "; edits are lost at the next start.",
        "global",
        f"    stats socket {contract.admin_socket_path(config)} mode 600 level admin",
        "    stats timeout 30s",
        f"    log {contract.LOG_HOST}:{contract.refusal_log_port(config)} "
        f"len {contract.LOG_DATAGRAM_LEN} format raw local0",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "    # a second haproxy on the same port must fail loudly, never serve a stale map",
        "    noreuseport",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option logasap",
        f'    log-format "{contract.LOG_FORMAT}"',
        "    timeout connect 10s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout client-fin 10s",
        "    timeout server-fin 10s",
        "    # an open CONNECT tunnel may stay quiet for long; sessiond cuts it when unpaid",
        "    timeout tunnel 2h",
        "",
        "frontend lthn_proxy",
        f"    bind {p.bind}:{p.port} ssl crt {config.certificate_path} alpn http/1.1",
        *_source_rules(config),
        "",
        "    # the destination's authority (host[:port]) of an absolute URI or a CONNECT; its",
        "    # host without brackets or a trailing dot, lower case; its port (80 if not given)",
        '    http-request set-var(txn.dest) "url,regsub(\'^[a-zA-Z][a-zA-Z0-9+.-]*://\','
        '\'\'),regsub(\'/.*\\$\',\'\'),regsub(\'^.*@\',\'\')"',
        "    acl dest_set var(txn.dest) -m reg .",
        "    http-request set-var(txn.dest) req.hdr(host,1) if !dest_set",
        "    acl dest_has_port var(txn.dest) -m reg :[0-9]+$",
        "    http-request set-var(txn.dport) int(80)",
        "    http-request set-var(txn.dport) int(443) if METH_CONNECT",
        '    http-request set-var(txn.dport) "var(txn.dest),regsub(\'^.*:([0-9]+)\\$\','
        '\'\\\\1\')" if dest_has_port',
        '    http-request set-var(txn.dhost) "var(txn.dest),regsub(\':[0-9]+\\$\',\'\'),'
        'regsub(\'^\\\\[(.*)\\\\]\\$\',\'\\\\1\'),regsub(\'[.]\\$\',\'\'),lower"',
        "",
        "    # --- method (every standard method passes, HEAD included) ---",
        f"    acl standard_method method {methods}",
        *_refuse(Refusal.BAD_METHOD, "!standard_method"),
        "",
        "    # --- the authid: one value, upper case, 16 hex; clients may repeat the header ---",
        "    acl has_lthn req.hdr_cnt(x-lthn-paymentid) gt 0",
        "    acl has_itns req.hdr_cnt(x-itns-paymentid) gt 0",
        "    acl many_lthn req.hdr_cnt(x-lthn-paymentid) gt 2",
        "    acl many_itns req.hdr_cnt(x-itns-paymentid) gt 2",
        *_refuse(Refusal.NO_PAYMENT, "!has_lthn !has_itns"),
        "    http-request set-var(txn.lthn1) req.hdr(x-lthn-paymentid,1),upper if has_lthn",
        "    http-request set-var(txn.lthn2) req.hdr(x-lthn-paymentid,-1),upper if has_lthn",
        "    http-request set-var(txn.itns1) req.hdr(x-itns-paymentid,1),upper if has_itns",
        "    http-request set-var(txn.itns2) req.hdr(x-itns-paymentid,-1),upper if has_itns",
        "    http-request set-var(txn.candidate) var(txn.lthn1) if has_lthn",
        "    http-request set-var(txn.candidate) var(txn.itns1) if !has_lthn",
        "    acl candidate_hex var(txn.candidate) -m reg ^[0-9A-F]{16}$",
        "    # (int ACLs know eq ge gt le lt, no ne: a differing value is present and not eq 0)",
        "    acl same_lthn2 var(txn.candidate),strcmp(txn.lthn2) eq 0",
        "    acl same_itns1 var(txn.candidate),strcmp(txn.itns1) eq 0",
        "    acl same_itns2 var(txn.candidate),strcmp(txn.itns2) eq 0",
        *_refuse(Refusal.BAD_AUTHID, "many_lthn || many_itns || !candidate_hex || "
                 "has_lthn !same_lthn2 || has_itns !same_itns1 || has_itns !same_itns2"),
        "    http-request set-var(txn.authid) var(txn.candidate)",
        "",
        "    # --- the status request goes to authd before the paid check (issue #4) ---",
        "    acl status_host var(txn.dhost) -i -m str " + " ".join(STATUS_HOSTS),
        "    acl status_path path_beg /status",
        "    http-request set-log-level silent if status_host status_path",
        "    http-request allow if status_host status_path",
        "",
        "    # --- paid? authd keeps this runtime map equal to the ledger's active set ---",
        f"    acl paid var(txn.authid),map({authid_map_path(config)}) -m found",
        *_refuse(Refusal.NO_PAYMENT, "!paid"),
        "",
        *_destination_rules(config, own_addresses),
        "",
        "    # --- admitted: nothing of ours leaves the node (issue #4); tracked by authid and",
        "    # client connection for sessiond, not logged (issue #16) ---",
        "    http-request del-header ^x-(lthn|itns)- -m reg",
        *(f"    {line}" for line in contract.admitted_rules()),
        "    use_backend lthn_status if status_host status_path",
        "    default_backend lthn_upstream",
        "",
        "backend lthn_upstream",
        f"    server upstream {backend_address(config)}",
        "    # squid refused the destination after resolving it (see squid_config.py); every",
        "    # http_access deny there is a destination rule, so its standard page counts too",
        "    acl squid_denied_destination res.hdr(x-squid-error) -m beg "
        f"{squid_config.DENY_PAGE} {squid_config.STANDARD_DENY_PAGE}",
        *_refuse(Refusal.DENY_DESTINATION, "squid_denied_destination", rule="http-response"),
        "",
        "backend lthn_status",
        f"    server authd 127.0.0.1:{p.status_port}",
        "",
        f"backend {contract.STICK_TABLE}",
        f"    {contract.stick_table_definition(config)}",
        "",
        f"backend {contract.STREAM_TABLE}",
        f"    {contract.stream_table_definition()}",
        "",
        f"backend {contract.SOURCE_TABLE}",
        f"    {contract.source_table_definition(config)}",
        "",
    ]
    return "\n".join(lines)
