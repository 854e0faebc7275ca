"""Renders haproxy.cfg from the node config: the TLS front end every proxy client talks to.

What the generated config does, in rule order (docs/design.md, issues #4, #10, #15);
every refusal answers its row of lthn/refusals.py (status, `X-LTHN-Status`, one line):
1. non-standard method -> 403 BAD_METHOD;
2. no payment header -> 403 NO_PAYMENT; several different values or not 16 hex -> 403
   BAD_AUTHID (`X-LTHN-PaymentID`, legacy `X-ITNS-PaymentID`, case-insensitive, upper-cased);
3. the status request (host `_remote_` / `remote.lethean`, path `/status...`) -> authd;
4. authid not in the runtime map (`contract.authid_map_path`) -> 403 NO_PAYMENT;
5. destinations, before any name is looked up: a name that cannot be one -> 400 BAD_HOST;
   squid-internal URLs, schemes other than http(s), IP literals in the ranges of
   lthn/destination_policy.py or the node's own addresses (a runtime ACL) -> 403
   DENY_DESTINATION; a port outside `proxy.http_ports` (`connect_ports` for CONNECT) ->
   403 DENY_PORT (squid checks again after name resolution);
6. every X-LTHN-* / X-ITNS-* header removed, the authid tracked in the stick table,
   the request forwarded to squid; every answer squid made itself (refusal or failure,
   told by its X-LTHN-Squid mark) becomes its catalogue row, and haproxy's own 5xx too.
Admitted requests are tracked in haproxy's stick tables (by authid, and by client
connection so sessiond can find the streams to cut) and not logged: they cost no daemon
any work (#16). Every refusal is logged at once (`option logasap`) as one raw datagram in
the format lthn/haproxy/request_log.py parses, to authd, squid's refusals and failures of
admitted requests included; what never became a request (a failed TLS handshake, an
unparsable request) through error-log-format. What other daemons rely on (tables, log
format and port, map, admin socket) is named in lthn/haproxy/contract.py, not here.
The request rules are rendered in two passes (`_fast_path`, #16): an admitted request
reads each refusal's condition once and skips the refusals' rules; any other request
runs the rules as written, in the order above.
"""
from __future__ import annotations

import os

from lthn import destination_policy as policy
from lthn import refusals
from lthn.config import Config
from lthn.haproxy import contract
from lthn.haproxy.contract import authid_map_path
from lthn.refusals import Refusal
from services.proxy import destinations, squid_config

STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                    "PATCH")
STATUS_HOSTS = ("_remote_", "remote.lethean")
OLD_WORKER_SECONDS = 30
# a payment header that is not one value of 16 hex digits (in either header name)
BAD_AUTHID = ("many_lthn || many_itns || !candidate_hex || repeated_lthn !same_lthn2 || "
              "has_itns !same_itns1 || repeated_itns !same_itns2")

def backend_address(config: Config) -> str:
    return f"127.0.0.1:{config.proxy.squid_port}" if config.proxy.backend == "squid" \
        else config.proxy.backend


# The node's own squid closes its port for a moment while it re-reads its config (firewalld
# asks it to when a destination deny list changes, #17). haproxy waits
# min(1 s, timeout connect) before it retries a refused connection: with the defaults, a
# request sent in that moment answered a second late. On loopback a connect completes at
# once or is refused, so a short connect timeout costs nothing, and the retries cover a
# squid that takes seconds to come back (under load, or restarted by supervisord).
SQUID_CONNECT_TIMEOUT_MS = 100
SQUID_RETRIES = 100


def _upstream_retries(config: Config) -> list[str]:
    if config.proxy.backend != "squid":
        return []    # another proxy, maybe across a network: haproxy's defaults
    return [
        "    # squid's port is closed for a moment while it re-reads its config: retry",
        f"    # every {SQUID_CONNECT_TIMEOUT_MS} ms for up to "
        f"{SQUID_CONNECT_TIMEOUT_MS * SQUID_RETRIES / 1000:g} s, not once a second",
        f"    timeout connect {SQUID_CONNECT_TIMEOUT_MS}ms",
        f"    retries {SQUID_RETRIES}",
    ]


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


def _destination_rules(config: Config) -> list[str]:
    """Rules 5: refuse what is refused without resolving names (squid does the rest)."""
    http_ports = " ".join(str(low) if low == high else f"{low}:{high}"
                          for low, high in destinations.http_ports(config))
    lines = [
        "    # --- destinations (issues #10, #15): squid checks again after name resolution ---",
        "    # a name no resolver may be asked for: a label over 63 characters, a name over 253",
        f"    acl dest_name_too_long var(txn.dhost) -m len gt {policy.MAX_NAME}",
        "    # (a label over 63 characters needs a name over 63: the length is tried first)",
        f"    acl dest_over_label var(txn.dhost) -m len gt {policy.MAX_LABEL}",
        f"    acl dest_label_too_long var(txn.dhost) -m reg [^.]{{{policy.MAX_LABEL + 1}}}",
        "    acl url_has_scheme url -m reg ^[a-zA-Z][a-zA-Z0-9+.-]*:",
        "    acl url_web_scheme url_beg -i http:// https://",
        "    acl squid_internal path_beg -i /squid-internal-",
        "    acl squid_internal url_beg -i cache_object:",
        "    # every range of lthn/destination_policy.py, and the node's own addresses (a",
        "    # file lthn-haproxy keeps equal to the machine's, at runtime too)",
        "    acl dest_denied_ip var(txn.dhost) -m ip "
        + " ".join(destinations.denied_networks(config)),
        "    acl dest_own_ip var(txn.dhost) -m ip -f "
        + str(destinations.own_addresses_path(config, "haproxy")),
        "    # all-numeric hosts that are not plain addresses (127.1, 2130706433, 0x7f.1):",
        "    # resolvers disagree on them, so they are refused rather than guessed",
        "    acl dest_numeric var(txn.dhost) -m reg -i "
        "^(0x[0-9a-f]+|[0-9]+)([.](0x[0-9a-f]+|[0-9]+))*$",
        "    acl dest_is_ip var(txn.dhost) -m ip 0.0.0.0/0 ::/0",
        "    acl connect_port var(txn.dport) -m int "
        + " ".join(str(p) for p in destinations.connect_ports(config)),
        f"    acl http_port var(txn.dport) -m int {http_ports}",
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
    # in the order tried; within a term the cheaper or more often false ACL first
    refusals = [
        (Refusal.BAD_HOST, "dest_name_too_long || dest_over_label dest_label_too_long"),
        (deny, "squid_internal"),
        (deny, "!METH_CONNECT !url_web_scheme url_has_scheme"),
        (deny, "dest_denied_ip !excepted || dest_own_ip !excepted"),
        # the deny files win over allow_destinations: the operator's "block it now"
        (deny, "dest_denied_file_ip"),
        (deny, "dest_denied_file_domain"),
        (deny, "dest_numeric !dest_is_ip"),
        *([(deny, "dest_denied_domain !excepted")] if domains else []),
        # haproxy never resolves a name: a port is refused before squid would look one up
        (Refusal.DENY_PORT, "METH_CONNECT !connect_port !excepted"),
        (Refusal.DENY_PORT, "!METH_CONNECT !http_port !excepted"),
    ]
    for refusal, condition in refusals:
        lines += _refuse(refusal, condition)
    return lines


def _squid_answers() -> list[str]:
    """squid's refusals and failures (its X-LTHN-Squid marker, squid_config.py), each
    answered with its row of the catalogue; a destination's own answer passes."""
    marker = squid_config.MARKER_HEADER
    lines = [
        "    # squid marks every reply with its error code and hierarchy code: `- HIER_DIRECT`",
        "    # is a destination's answer. An error squid made early has no mark, or `-` with",
        "    # no server (HIER_NONE): then its X-Squid-Error names it (squid_config.py)",
        f"    acl squid_marked res.hdr_cnt({marker}) gt 0",
        f"    acl squid_code res.hdr({marker}) -m reg ^[^-]",
        f"    acl squid_no_server res.hdr({marker}) -m end HIER_NONE",
        "    acl squid_error res.hdr_cnt(x-squid-error) gt 0",
        "    # a destination's own answer (`-` first) leaves txn.answered_by unset, so no",
        "    # refusal below reads it (none of their patterns begins with `-`)",
        f"    http-response set-var(txn.answered_by) res.hdr({marker}) if squid_code",
        "    http-response set-var(txn.answered_by) res.hdr(x-squid-error) "
        "if squid_error !squid_marked || squid_error !squid_code squid_no_server",
        f"    http-response del-header {marker}",
        "    # nothing of ours comes from a destination (it could pose as the node)",
        "    http-response del-header x-lthn- -m beg",
        "    http-response del-header x-itns- -m beg",
        "    # a destination's own answer ends here (`allow` ends the rules): every rule",
        "    # below reads txn.answered_by (#16)",
        "    acl squid_answered var(txn.answered_by) -m found",
        "    http-response allow if !squid_answered",
    ]
    for refusal, markers in squid_config.answers().items():
        name = f"squid_{refusal.code.lower()}"
        lines.append(f"    acl {name} var(txn.answered_by) -m reg "
                     + squid_config.marker_regex(markers))
        lines += _refuse(refusal, name, rule="http-response")
    lines.append("    acl squid_made var(txn.answered_by) -m reg ^(ERR_|[0-9]+:)")
    lines += _refuse(Refusal.PROXY_ERROR, "squid_made", rule="http-response")
    return lines


def _client_cache_control(config: Config) -> list[str]:
    """The client's own Cache-Control, for squid to send instead of its own (squid adds
    max-age=259200 to every request; squid_config.py). Two headers are joined; a third
    and later ones are dropped (squid would have merged them all into one). Header lines
    are counted (`fhdr_cnt`): `hdr_cnt` counts a line's comma-separated values, and one
    line with two directives was sent twice over."""
    if config.proxy.backend != "squid":
        return []
    header = squid_config.CLIENT_CC_HEADER
    return [
        "    acl client_cc_one req.fhdr_cnt(cache-control) eq 1",
        "    acl client_cc_more req.fhdr_cnt(cache-control) gt 1",
        f"    http-request set-header {header} %[req.fhdr(cache-control,1)] if client_cc_one",
        f'    http-request set-header {header} "%[req.fhdr(cache-control,1)], '
        '%[req.fhdr(cache-control,-1)]" if client_cc_more',
    ]


# what haproxy itself answers when it cannot get an answer from squid (issue #15)
OWN_ERRORS = {500: Refusal.PROXY_ERROR, 502: Refusal.PROXY_ERROR, 503: Refusal.UNAVAILABLE,
              504: Refusal.DESTINATION_TIMEOUT}


def _own_errors() -> list[str]:
    lines = []
    for status, refusal in OWN_ERRORS.items():
        lines.append(f"    http-error status {status} content-type text/plain string "
                     f'"{refusal.text}\\n" hdr {refusals.HEADER} {refusal.code}')
    lines += [
        "    # haproxy 2.6 cannot put our header in the 400 and 408 it answers itself to a",
        "    # request it cannot parse or that is not complete in time, and its page names",
        "    # it: the connection is closed without an answer; error-log-format reports it",
        "    errorfile 400 /dev/null",
        "    errorfile 408 /dev/null",
    ]
    return lines


def _threads(cpus: int) -> list[str]:
    """One haproxy thread on a machine of two CPUs or fewer, else haproxy's default (a
    thread per CPU). Measured on two CPUs (bench/bench_proxy.py, #16): one thread spent
    12-22% less CPU per GET in every run, leaving the other CPU to squid."""
    if cpus > 2:
        return []
    return ["    # two CPUs or fewer: one thread, squid has the other (#16, bench_proxy.py)",
            "    nbthread 1"]


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


def source_rules(config: Config) -> list[str]:
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
        *(f"    {line}" for line in contract.connection_rules()),
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
        lines += _refuse(Refusal.OVERLIMIT, " || ".join(f"{n} !never_ban" for n in names))
    return lines


def _request_rules(config: Config, methods: str) -> list[str]:
    """Every http-request rule in the order tried: each check, then its refusal."""
    return [
        *source_rules(config),
        "",
        "    # the destination's authority (host[:port]) of an absolute URI or a CONNECT; its",
        "    # host without brackets or a trailing dot, lower case; its port (80 if not given)",
        '    http-request set-var(txn.dest) "url,regsub(\'^[a-zA-Z][a-zA-Z0-9+.-]*://\','
        '\'\'),regsub(\'/.*\\$\',\'\'),regsub(\'^.*@\',\'\')"',
        "    acl dest_set var(txn.dest) -m len gt 0",
        "    http-request set-var(txn.dest) req.hdr(host,1) if !dest_set",
        "    acl dest_has_port var(txn.dest) -m reg :[0-9]+$",
        "    http-request set-var(txn.dport) int(80)",
        "    http-request set-var(txn.dport) int(443) if METH_CONNECT || { url_beg -i https:// }",
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
        "    # (each header counted once, #16: the ACLs below read the counts)",
        "    http-request set-var(txn.lthn_n) req.hdr_cnt(x-lthn-paymentid)",
        "    http-request set-var(txn.itns_n) req.hdr_cnt(x-itns-paymentid)",
        "    acl has_lthn var(txn.lthn_n) -m int gt 0",
        "    acl has_itns var(txn.itns_n) -m int gt 0",
        "    acl many_lthn var(txn.lthn_n) -m int gt 2",
        "    acl many_itns var(txn.itns_n) -m int gt 2",
        "    acl repeated_lthn var(txn.lthn_n) -m int gt 1",
        "    acl repeated_itns var(txn.itns_n) -m int gt 1",
        *_refuse(Refusal.NO_PAYMENT, "!has_lthn !has_itns"),
        "    # (a header's last value is read only when there is more than one, #16)",
        "    http-request set-var(txn.candidate) req.hdr(x-lthn-paymentid,1),upper if has_lthn",
        "    http-request set-var(txn.lthn2) req.hdr(x-lthn-paymentid,-1),upper "
        "if repeated_lthn",
        "    http-request set-var(txn.itns1) req.hdr(x-itns-paymentid,1),upper if has_itns",
        "    http-request set-var(txn.itns2) req.hdr(x-itns-paymentid,-1),upper "
        "if repeated_itns",
        "    http-request set-var(txn.candidate) var(txn.itns1) if !has_lthn",
        "    acl candidate_hex var(txn.candidate) -m reg ^[0-9A-F]{16}$",
        "    # (int ACLs know eq ge gt le lt, no ne: a differing value is present and not eq 0)",
        "    acl same_lthn2 var(txn.candidate),strcmp(txn.lthn2) eq 0",
        "    acl same_itns1 var(txn.candidate),strcmp(txn.itns1) eq 0",
        "    acl same_itns2 var(txn.candidate),strcmp(txn.itns2) eq 0",
        *_refuse(Refusal.BAD_AUTHID, BAD_AUTHID),
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
        *_destination_rules(config),
    ]


def _admitted_rules(config: Config) -> list[str]:
    return [
        "    # --- admitted: nothing of ours leaves the node (issue #4); tracked by authid and",
        "    # client connection for sessiond, not logged (issue #16) ---",
        "    http-request del-header x-lthn- -m beg",
        "    http-request del-header x-itns- -m beg",
        *_client_cache_control(config),
        *(f"    {line}" for line in contract.admitted_rules()),
    ]


# the first pass silences every request at its start, so its admitted rules leave
# contract.admitted_rules' own silencing out
SILENT = f"    {contract.SILENT_RULE}"


def _condition(line: str) -> str:
    return line.rsplit(" if ", 1)[1]


def _fast_path(rules: list[str], admitted: list[str]) -> list[str]:
    """The request rules in two passes (#16). An admitted request would read each ACL
    once per rule naming it (a refusal's condition stands in up to four rules: count,
    count, reason, answer), and go through every refusal's rules: ~80 rules, three
    quarters of haproxy's work per GET (callgrind). So first every value the rules read
    is set, in their order, and every refusal's condition is read once (two flags:
    before the status request's pass, and after); a request no refusal applies to is
    then passed, tracked and allowed (`allow` ends the rules). The rest go through
    `rules` as written, which answer exactly as before: the variables a log line
    shows are unset first, and set again in their place."""
    declared = [r for r in rules if r.lstrip().startswith(("acl ", "tcp-request "))]
    values = [r for r in rules if r.lstrip().startswith("http-request set-var(")
              and "set-var(txn.reason)" not in r]
    status = next(i for i, r in enumerate(rules)
                  if r.lstrip().startswith("http-request allow if status_host"))
    answers = [(i, _condition(r)) for i, r in enumerate(rules)
               if r.lstrip().startswith("http-request return ")]
    early = " || ".join(c for i, c in answers if i < status)
    late = " || ".join(c for i, c in answers if i > status)

    def admitted_only(line: str) -> str:
        if " if " not in line:
            return f"{line} if !refused"
        head, condition = line.rsplit(" if ", 1)
        return head + " if " + " || ".join(f"!refused {t}" for t in condition.split(" || "))

    return [
        *declared,
        "",
        "    # --- first pass (#16): the values every rule reads, then whether any refusal",
        "    # applies, each condition read once; admitted requests end this pass, not",
        "    # logged (the second pass logs again) ---",
        SILENT,
        *values,
        f"    http-request set-var(txn.refused_early) bool(true) if {early}",
        "    acl refused_early var(txn.refused_early) -m bool",
        "    # (one flag for both: each admitted request's rule below reads one variable)",
        f"    http-request set-var(txn.refused) bool(true) if refused_early || {late}",
        "    acl refused var(txn.refused) -m bool",
        "    http-request allow if status_host status_path !refused_early",
        *(admitted_only(r) if r.lstrip().startswith("http-request ") else r
          for r in admitted if r != SILENT),
        "    http-request allow if !refused",
        "",
        "    # --- second pass: a refusal applies; every rule as written, in order, so it",
        "    # answers, counts and logs as it always did (the log's destination and authid",
        "    # are shown only once their rules have set them) ---",
        "    http-request set-log-level info",
        "    http-request unset-var(txn.dest)",
        "    http-request unset-var(txn.authid)",
        *(r for r in rules if r not in declared),
        *(r for r in admitted if not r.lstrip().startswith("acl ")),
    ]


def render(config: Config) -> str:
    """The whole haproxy.cfg. The own-addresses file (`destinations.own_addresses_path`)
    and the authid map must exist before haproxy reads it."""
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
        *_threads(os.cpu_count() or 1),
        "    # a reload (master-worker, SIGUSR2) hands the listening sockets to the new worker;",
        "    # the old one finishes its requests, and its tunnels end after this long (#15)",
        f"    hard-stop-after {OLD_WORKER_SECONDS}s",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option logasap",
        f'    log-format "{contract.LOG_FORMAT}"',
        "    # a failed TLS handshake, an unreadable or incomplete request (no stream, so",
        "    # the format above cannot run): one line all the same, with its code (#15)",
        f'    error-log-format "{contract.ERROR_LOG_FORMAT}"',
        "    # a connection that sends nothing (a browser's preconnect) is not an error",
        "    option http-ignore-probes",
        "    timeout connect 10s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout client-fin 10s",
        "    timeout server-fin 10s",
        "    # an open CONNECT tunnel may stay quiet for long; sessiond cuts it when unpaid",
        "    timeout tunnel 2h",
        *_own_errors(),
        "",
        "frontend lthn_proxy",
        f"    bind {p.bind}:{p.port} ssl crt {config.certificate_path} alpn http/1.1",
        *_fast_path(_request_rules(config, methods), _admitted_rules(config)),
        "    use_backend lthn_status if status_host status_path",
        "    default_backend lthn_upstream",
        "",
        "backend lthn_upstream",
        *_upstream_retries(config),
        f"    server upstream {backend_address(config)}",
        *_squid_answers(),
        "",
        "backend lthn_status",
        f"    server authd 127.0.0.1:{p.status_port}",
        "    # a status answer that refuses for another reason than the client's waiting for",
        "    # its payment (BAD_ID, CONNECTION_ERROR) is a refusal, logged (issue #15)",
        f"    acl status_refused res.hdr({refusals.HEADER}) -m found",
        f"    acl status_waiting res.hdr({refusals.HEADER}) -m str {Refusal.NO_PAYMENT.code}",
        f"    http-response set-var(txn.reason) res.hdr({refusals.HEADER}) "
        "if !{ status 200 } status_refused !status_waiting",
        "    http-response set-log-level info if !{ status 200 } status_refused "
        "!status_waiting",
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
