"""Renders squid.conf from the node config: the loopback forward proxy behind haproxy.

squid is where destination safety holds after name resolution (issues #10, #15): `dst`
ACLs resolve the request's host (plain HTTP and CONNECT alike) and refuse every range of
lthn/destination_policy.py and the node's own addresses (a file that follows them while
squid runs), plus the operator's ranges and domains; ports are checked as in haproxy.

What squid says goes through haproxy, which answers the client itself (issue #15):
- every reply gets `X-LTHN-Squid: <squid's error code> <hierarchy code>` (`- HIER_DIRECT`
  for a destination's own answer); squid drops that header from what a destination
  sends first, so a destination cannot pretend to be squid. A reply without it (a failed
  CONNECT), or with `- HIER_NONE` (no error code recorded and no server asked: an
  invalid request), squid made early: its `X-Squid-Error` names the error. A refusal
  here is a `deny_info` redirect whose code is `302:http://refused.lthn.invalid/<code>`
  (no error page files needed);
- haproxy turns each squid error into its row of lthn/refusals.py (`answers()`), and
  deletes the header;
- nothing of squid reaches the client or the destination: no X-Cache headers, no Via,
  no X-Forwarded-For, and no `Cache-Control: max-age=259200` added toward the origin
  (haproxy hands the client's own Cache-Control over in X-LTHN-Client-CC; squid sends
  exactly that, or none).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from lthn.config import Config
from lthn.haproxy import contract
from lthn.refusals import Refusal
from services.proxy import destinations

DEFAULT_USER = "proxy"  # squid refuses to run as root; Debian's squid user
MARKER_HEADER = "X-LTHN-Squid"
CLIENT_CC_HEADER = "X-LTHN-Client-CC"
REFUSAL_URL = "http://refused.lthn.invalid/"

# squid's error names (its templates) -> what the client is told; anything else that
# squid makes is PROXY_ERROR
SQUID_ERRORS: dict[str, Refusal] = {
    "ERR_ACCESS_DENIED": Refusal.DENY_DESTINATION,
    "ERR_CACHE_MGR_ACCESS_DENIED": Refusal.DENY_DESTINATION,
    "ERR_DNS_FAIL": Refusal.DNS_FAILURE,
    # squid 5.7 reports a name that does not resolve as a read error from no server
    "ERR_READ_ERROR HIER_NONE": Refusal.DNS_FAILURE,
    "ERR_CONNECT_FAIL": Refusal.CONNECT_FAILED,
    "ERR_SECURE_CONNECT_FAIL": Refusal.CONNECT_FAILED,
    "ERR_CANNOT_FORWARD": Refusal.CONNECT_FAILED,
    "ERR_READ_TIMEOUT": Refusal.DESTINATION_TIMEOUT,
    "ERR_LIFETIME_EXP": Refusal.DESTINATION_TIMEOUT,
    "ERR_GATEWAY_FAILURE": Refusal.DESTINATION_TIMEOUT,
    "ERR_READ_ERROR": Refusal.DESTINATION_ERROR,
    "ERR_WRITE_ERROR": Refusal.DESTINATION_ERROR,
    "ERR_ZERO_SIZE_OBJECT": Refusal.DESTINATION_ERROR,
    "ERR_INVALID_RESP": Refusal.DESTINATION_ERROR,
    "ERR_TOO_BIG": Refusal.DESTINATION_ERROR,
    "ERR_INVALID_REQ": Refusal.BAD_REQUEST,
    "ERR_INVALID_URL": Refusal.BAD_REQUEST,
    "ERR_UNSUP_REQ": Refusal.BAD_REQUEST,
    "ERR_UNSUP_HTTPVERSION": Refusal.BAD_REQUEST,
    "ERR_PROTOCOL_UNKNOWN": Refusal.BAD_REQUEST,
    "ERR_CONFLICT_HOST": Refusal.BAD_REQUEST,
    "ERR_SHUTTING_DOWN": Refusal.UNAVAILABLE,
}


def refusal_marker(refusal: Refusal) -> str:
    """How `X-LTHN-Squid` begins when squid refused with our deny_info for `refusal`."""
    return f"302:{REFUSAL_URL}{refusal.code}"


def answers() -> dict[Refusal, list[str]]:
    """For haproxy: each refusal and how the squid error codes that mean it begin (the
    code is followed by a space and the hierarchy code, or by nothing), in the order
    they must be tried (the DNS failure's read error before other read errors)."""
    out: dict[Refusal, list[str]] = {}
    for refusal in (Refusal.DENY_DESTINATION, Refusal.DENY_PORT):
        out.setdefault(refusal, []).append(refusal_marker(refusal))
    for name, refusal in SQUID_ERRORS.items():
        out.setdefault(refusal, []).append(name)
    return out


def marker_regex(markers: list[str]) -> str:
    """A regex matching an error code that is one of `markers`, then a space or the end;
    without a backslash or a space, which haproxy's config parser would take."""
    space = "[[:space:]]"
    escaped = [m.replace(".", "[.]").replace(" ", space) for m in markers]
    return "^(" + "|".join(escaped) + f")({space}|$)"


def config_path(config: Config) -> Path:
    """The rendered squid.conf (in the private run dir: squid reads it as root)."""
    return config.state / "run" / "squid.conf"


def effective_user() -> str | None:
    """The user squid drops to: `proxy` when started as root, else none (it stays who it is)."""
    return DEFAULT_USER if os.geteuid() == 0 else None


def _allowed(path: Path, user: str, bits: tuple[int, int, int]) -> bool:
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    st = path.stat()
    if st.st_uid == entry.pw_uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in groups:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


def reachable_by(path: Path, user: str | None) -> bool:
    """Can `user` enter every directory above `path`? (None: we stay ourselves, so yes.)"""
    if user is None:
        return True
    execute = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    # a parent still missing is made by us below an existing one, then given to the user
    return all(_allowed(p, user, execute) for p in path.parents if p.exists())


def readable_by(path: Path, user: str | None) -> bool:
    """Can `user` read the file `path` (squid reads its hosts file after dropping root)?"""
    if user is None:
        return os.access(path, os.R_OK)
    return path.is_file() and reachable_by(path, user) and _allowed(
        path, user, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH))


def _ranges(ranges: list[tuple[int, int]]) -> str:
    return " ".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def render(config: Config, user: str | None = None) -> str:
    """squid.conf. Logs go to stderr (`squid -N -d 1`) for supervisord; no pid file, no
    access log (nothing kept of what clients fetch), no disk cache. The own-addresses
    file (`destinations.own_addresses_path`) must exist before squid reads this."""
    p = config.proxy
    denied = destinations.denied_networks(config)
    domains = destinations.denied_domains(config)
    own = destinations.own_addresses_path(config, "squid")
    lines = [
        "# Generated by lthn-squid from " + (config.source or "the node config")
        + "; edits are lost at the next start or reload.",
        f"http_port 127.0.0.1:{p.squid_port}",
        "pid_filename none",
        "cache_log /dev/null",
        "access_log none",
        "coredump_dir none",
        f"hosts_file {p.hosts_file or '/etc/hosts'}",
    ]
    if p.dns_servers:
        lines.append("dns_nameservers " + " ".join(p.dns_servers))
    if user:
        lines.append(f"cache_effective_user {user}")
    lines += [
        "# a pass-through proxy: no disk cache, nothing kept of what clients fetch",
        "cache deny all",
        "cache_mem 8 MB",
        "visible_hostname lethean-exit",
        "httpd_suppress_version_string on",
        "shutdown_lifetime 1 seconds",
        "# squid talks to nothing but the destinations clients ask for",
        "pinger_enable off",
        "digest_generation off",
        "icp_port 0",
        "htcp_port 0",
        "",
        "# nothing tells a destination or a client that squid is here (issue #15)",
        "forwarded_for delete",
        "via off",
        "reply_header_access X-Cache deny all",
        "reply_header_access X-Cache-Lookup deny all",
        f"acl lthn_client_cc req_header {CLIENT_CC_HEADER} .",
        f"request_header_access {CLIENT_CC_HEADER} deny all",
        "# squid adds max-age=259200 to every request's Cache-Control: send the client's",
        "request_header_access Cache-Control deny all",
        f"request_header_add Cache-Control \"%'{{{CLIENT_CC_HEADER}}}>h\" lthn_client_cc",
        "# squid's own error code on every reply, for haproxy; never a destination's",
        f"reply_header_access {MARKER_HEADER} deny all",
        f'reply_header_add {MARKER_HEADER} "%err_code %Sh" all',
        "",
        "acl CONNECT method CONNECT",
        "acl lthn_internal urlpath_regex ^/squid-internal-",
        "acl lthn_connect_ports port " + " ".join(map(str, destinations.connect_ports(config))),
        "acl lthn_http_ports port " + _ranges(destinations.http_ports(config)),
        "acl lthn_denied_dst dst " + " ".join(denied),
        f'acl lthn_own_dst dst "{own}"',
        "# the operator's dst_deny.ips / dst_deny.doms (issue #17): files firewalld keeps,",
        "# re-read when it asks squid to reconfigure; empty files match nothing",
        f'acl lthn_denied_file_dst dst "{contract.source_acl_path(config, "dst_deny_ips")}"',
        "acl lthn_denied_file_domain dstdomain -n "
        f'"{contract.source_acl_path(config, "dst_deny_subdomains")}"',
    ]
    if domains:
        # -n: an IP-literal URL is not reverse-resolved to be compared with names
        lines.append("acl lthn_denied_domain dstdomain -n " + " ".join("." + d for d in domains))
    allows = []
    for i, exc in enumerate(destinations.exceptions(config)):
        match = f"dstdomain -n {exc.host}" if exc.is_name else f"dst {exc.network}"
        lines.append(f"acl lthn_exception_{i}_host {match}")
        lines.append(f"acl lthn_exception_{i}_port port {exc.port}")
        allows.append(f"http_access allow lthn_exception_{i}_host lthn_exception_{i}_port")
    deny = refusal_marker(Refusal.DENY_DESTINATION)
    lines += [
        "",
        "# the cache manager and squid's internal URLs are never for clients (issue #10)",
        "http_access deny manager",
        "http_access deny lthn_internal",
        "# the deny files win over the exceptions: they are the operator's \"block it now\"",
        "http_access deny lthn_denied_file_domain",
        "http_access deny lthn_denied_file_dst",
        "# the operator's exceptions come before the denies",
        *allows,
        "http_access deny CONNECT !lthn_connect_ports",
        "http_access deny !CONNECT !lthn_http_ports",
        *(["http_access deny lthn_denied_domain"] if domains else []),
        "# dst resolves the host name first: a name pointing inside is refused too",
        "http_access deny lthn_denied_dst",
        "http_access deny lthn_own_dst",
        "http_access allow all",
        "",
        f"deny_info {refusal_marker(Refusal.DENY_PORT)} lthn_connect_ports lthn_http_ports",
        f"deny_info {deny} lthn_denied_dst lthn_own_dst lthn_internal manager "
        "lthn_denied_file_dst lthn_denied_file_domain"
        + (" lthn_denied_domain" if domains else ""),
        "",
    ]
    return "\n".join(lines)
