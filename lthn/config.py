"""The node's one YAML config file: its schema, loading and cross-field checks.

Every setting is declared once below; `lthnctl config check` and every daemon load it
through `load()`. Money in the file is in coins (decimal); everything inside the node is
in atomic units (`Config.atomic()`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml

from lthn.destination_policy import parse_port_ranges
from lthn.haproxy import contract as haproxy_contract
from lthn.schema import ConfigError, Parser, setting

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
SERVICE_ID = re.compile(r"^[0-9a-fA-F]{2}$")
DEFAULT_ATOMIC_UNITS = {"monero": 10**12, "lethean": 10**8}
# firewall list files: name -> (setting in `firewall`, Lethean's file name) (issue #17)
LIST_FILES = {"src_allow": ("src_allow", "src_allow.ips"),
              "src_deny": ("src_deny", "src_deny.ips"),
              "dst_deny_ips": ("dst_deny_ips", "dst_deny.ips"),
              "dst_deny_domains": ("dst_deny_domains", "dst_deny.doms")}


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port (1-65535)"


def _ports(values: list[int]) -> str | None:
    bad = [v for v in values if not 1 <= v <= 65535]
    return f"must hold TCP ports (1-65535), {bad[0]} is not one" if bad else None


def _service_id(value: str) -> str | None:
    return None if SERVICE_ID.match(value) else "must be two hex characters, like \"1A\""


def _provider_id(value: str) -> str | None:
    return None if HEX64.match(value) else "must be 64 hex characters"


def _endpoint(value: str) -> str | None:
    if value.startswith("ipc://") or value.startswith("tcp://"):
        return None
    return "must be an ipc:// or tcp:// ZeroMQ endpoint"


def _url(value: str) -> str | None:
    return None if re.match(r"^https?://[^/\s]+", value) else "must be an http:// or https:// URL"


def _networks(values: list[str]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f'"{v}" is not an IP address or CIDR range'
    return None


def _exceptions(values: list[str]) -> str | None:
    for v in values:
        if "://" in v:
            # a URL passed the check before and then matched nothing (issue #15)
            host_port = v.split("://", 1)[1].split("/", 1)[0]
            return f'"{v}" is a URL; write HOST:PORT or CIDR:PORT, like "{host_port}"'
        if parse_exception(v) is None:
            return f'"{v}" is not HOST:PORT or CIDR:PORT'
    return None


def _address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def _addresses(values: list[str]) -> str | None:
    for v in values:
        if _address(v):
            return f'"{v}" is not an IP address'
    return None


def _ipv4_pool(value: str) -> str | None:
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        return 'must be an IPv4 network in CIDR form, like "10.8.0.0/24"'
    return None if network.prefixlen <= 29 else "must be /29 or larger"


def _ipv6_pool(value: str) -> str | None:
    if not value:
        return None
    try:
        network = ipaddress.IPv6Network(value)
    except ValueError:
        return 'must be an IPv6 network in CIDR form, like "fd00:8::/64"'
    return None if 64 <= network.prefixlen <= 112 else "must be /64 to /112 (OpenVPN's limits)"


def _interface(value: str) -> str | None:
    # what Linux accepts as an interface name; it also goes into OpenVPN's and nft's files
    if re.match(r"^[A-Za-z0-9_.-]{1,15}$", value):
        return None
    return "must be an interface name: 1 to 15 letters, digits, '_', '.' or '-'"


def _cipher_list(value: str) -> str | None:
    if re.match(r"^[A-Za-z0-9-]+(:[A-Za-z0-9-]+)*$", value):
        return None
    return 'must be cipher names separated by ":", like "AES-256-GCM:AES-256-CBC"'


def _port_ranges(values: list[int | str]) -> str | None:
    try:
        parse_port_ranges(values)
    except ValueError as exc:
        return f"must hold ports or LOW-HIGH ranges: {exc}"
    return None


HOST_NAME = re.compile(r"^[0-9A-Za-z_]([0-9A-Za-z_-]*[0-9A-Za-z_])?"
                       r"(\.[0-9A-Za-z_]([0-9A-Za-z_-]*[0-9A-Za-z_])?)*\.?$")


def parse_exception(text: str) -> tuple[str, int] | None:
    """'127.0.0.1:8080', '[::1]:80', 'origin.test:443', '10.1.0.0/16:80' -> (host, port);
    None for anything else (a URL, a path, a name that cannot be a host name)."""
    m = re.match(r"^\[?([0-9A-Za-z.:/_-]+?)\]?:(\d{1,5})$", text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        return None
    host = m.group(1)
    try:
        if "/" in host:
            ipaddress.ip_network(host, strict=False)
        elif ":" in host or not HOST_NAME.match(host):
            ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(m.group(2))


@dataclass(frozen=True)
class Provider:
    id: str = setting(doc="provider id: 64 hex characters (the ed25519 public key in Lethean)",
                      check=_provider_id)
    name: str = setting("Lethean exit node", "provider name shown to clients")
    key: str = setting("", "file with the provider's ed25519 private key, which signs sdp.json "
                       "(lthn-node init makes it)")


@dataclass(frozen=True)
class Wallet:
    url: str = setting("http://127.0.0.1:18082/json_rpc", "wallet JSON-RPC URL", _url)
    user: str = setting("", "RPC user for HTTP digest auth (empty: no auth)")
    password: str = setting("", "RPC password for HTTP digest auth")
    dialect: Literal["monero", "lethean"] = setting(
        "lethean", "monero: get_transfers; lethean: get_vpn_transfers")
    atomic_units: int | None = setting(
        None, "atomic units per coin (default: 10^8 for lethean, 10^12 for monero)", _positive)
    poll_interval: float = setting(
        0.1, "seconds between listings of the wallet's pool: a payment is seen this fast",
        _positive)
    refresh_interval: float = setting(
        2.0, "seconds between wallet refreshes (new blocks) when daemon_zmq is not set",
        _positive)
    daemon_zmq: str = setting(
        "", "the coin daemon's ZMQ publisher (monerod --zmq-pub), e.g. tcp://127.0.0.1:18083:"
        " new blocks are followed as they arrive (empty: refresh every refresh_interval)",
        lambda v: _endpoint(v) if v else None)
    timeout: float = setting(5.0, "seconds before a wallet call is given up", _positive)
    start_height: int = setting(0, "first block height to scan on a fresh ledger", _not_negative)

    @property
    def units(self) -> int:
        return self.atomic_units or DEFAULT_ATOMIC_UNITS[self.dialect]


@dataclass(frozen=True)
class Service:
    id: str = setting(doc="two hex characters; an authid starts with them", check=_service_id)
    name: str = setting(doc="service name")
    type: Literal["proxy", "vpn"] = setting(doc="proxy or vpn")
    cost: Decimal = setting(doc="price in coins per minute", check=_positive)
    firstPrePaidMinutes: int = setting(
        10, "minutes of credit the first payment must buy", _not_negative)
    firstVerificationsNeeded: int = setting(
        0, "confirmations the first payment needs", _not_negative)
    subsequentPrePaidMinutes: int = setting(
        10, "minutes of credit a later top-up must buy", _not_negative)
    subsequentVerificationsNeeded: int = setting(
        0, "confirmations a later top-up needs", _not_negative)
    allowRefunds: bool = setting(False, "whether refunds are offered (informational)")
    downloadSpeed: int = setting(0, "download limit in bytes/s, 0 = none (informational)",
                                 _not_negative)
    uploadSpeed: int = setting(0, "upload limit in bytes/s, 0 = none (informational)",
                               _not_negative)
    billing: Literal["connected", "wallclock"] = setting(
        "connected", "connected: charge only while a session is live; wallclock: Lethean's")
    idleGrace: float = setting(
        60.0, "connected billing: seconds still charged after the last session ends",
        _not_negative)

    @property
    def key(self) -> str:
        return self.id.upper()


@dataclass(frozen=True)
class Proxy:
    bind: str = setting("0.0.0.0", "address haproxy's TLS front end listens on")
    port: int = setting(8180, "TLS port for proxy clients", _port)
    certificate: str = setting(
        "", "PEM file with the provider certificate and key (default: state_dir/tls/)")
    ca: str = setting("", "PEM file of the CA that signed the certificate (for sdp.json)")
    backend: str = setting("squid", 'squid (run by the node) or HOST:PORT of another proxy')
    squid_port: int = setting(3128, "loopback port of the node's squid", _port)
    status_port: int = setting(8181, "loopback port of authd's status answerer", _port)
    log_port: int = setting(8182, "loopback UDP port where haproxy sends its request log",
                            _port)
    connect_ports: list[int] = setting([443], "ports CONNECT may reach", _ports)
    http_ports: list[int | str] = setting(
        [80, 443, "1025-65535"], "ports plain HTTP may reach: ports and LOW-HIGH ranges "
        "(like squid's Safe_ports)", _port_ranges)
    deny_networks: list[str] = setting(
        [], "extra destination ranges to refuse (CIDR), beside the built-in ones", _networks)
    deny_domains: list[str] = setting([], "destination domains to refuse (and subdomains)")
    allow_destinations: list[str] = setting(
        [], "exceptions to the destination rules: HOST:PORT or CIDR:PORT", _exceptions)
    hosts_file: str = setting("", "hosts file squid resolves with (default: /etc/hosts)")
    dns_servers: list[str] = setting(
        [], "DNS servers squid asks (default: those of /etc/resolv.conf)", _networks)


@dataclass(frozen=True)
class Vpn:
    enabled: bool = setting(
        False, "VPN mode: run OpenVPN and admit paid authids of vpn services (issue #18)")
    bind: str = setting("0.0.0.0", "address OpenVPN listens on", _address)
    port: int = setting(1194, "port OpenVPN listens on (clients: vpn[0].port in sdp.json)",
                        _port)
    proto: Literal["udp", "tcp"] = setting("udp", "transport clients connect with")
    network: str = setting("10.8.0.0/24", "IPv4 pool of client tunnel addresses (CIDR)",
                           _ipv4_pool)
    network6: str = setting("", "IPv6 pool of client tunnel addresses (CIDR, /64 to /112); "
                            "empty: IPv4 only", _ipv6_pool)
    dns: list[str] = setting([], "DNS server addresses pushed to clients", _addresses)
    routes: list[str] = setting([], "extra routes pushed to clients (CIDR)", _networks)
    redirect_gateway: bool = setting(
        True, "push redirect-gateway: clients send all their traffic through the node")
    device: str = setting("lthnvpn0", "tun device name (the nftables rules match it)",
                          _interface)
    outside_interface: str = setting(
        "", "interface client traffic leaves by, source-NATed (default: the default "
        "route's)", lambda v: _interface(v) if v else None)
    allow_networks: list[str] = setting(
        [], "destination ranges VPN clients may reach despite the egress filter (CIDR)",
        _networks)
    deny_networks: list[str] = setting(
        [], "extra destination ranges VPN clients may not reach (CIDR), beside the "
        "non-global ones", _networks)
    data_ciphers: str = setting(
        "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305:AES-256-CBC",
        "OpenVPN data-ciphers; AES-256-CBC lets original Lethean clients in", _cipher_list)
    max_clients: int = setting(1024, "most clients connected at once", _positive)
    management_socket: str = setting(
        "", "OpenVPN's management socket, held by lthn-vpnd (default: "
        "state_dir/run/openvpn.sock)")


@dataclass(frozen=True)
class Bus:
    publish: str = setting("", "endpoint publishers connect to (default: ipc in state_dir)",
                           lambda v: _endpoint(v) if v else None)
    subscribe: str = setting("", "endpoint subscribers connect to (default: ipc in state_dir)",
                             lambda v: _endpoint(v) if v else None)
    max_message_bytes: int = setting(65536, "larger bus messages are dropped", _positive)
    heartbeat_interval: float = setting(
        5.0, "seconds between each daemon's node.heartbeat; lthnctl status calls a daemon "
        "down after two missed", _positive)


@dataclass(frozen=True)
class Sessions:
    tracking: bool = setting(True, "track sessions and cut them when credit runs out")
    max_wait_to_spend: float = setting(
        1800.0, "seconds after activation when spending starts even without a session",
        _not_negative)
    tick: float = setting(1.0, "seconds between charging rounds", _positive)
    charge_interval: float = setting(
        60.0, "longest time an authid's use goes unwritten in the ledger (its balance "
        "lags at most this; credit running out is seen within a tick anyway)", _positive)


@dataclass(frozen=True)
class Firewall:
    refusal_window: float = setting(
        60.0, "seconds over which firewalld counts refusals per source address (its "
        "report line, and automatic bans)", _positive)
    refusal_threshold: int = setting(
        20, "refusals of one reason (bad authid, destination probe, bad request) from one "
        "address within the window that ban it; NO_PAYMENT never counts", _positive)
    overlimit_threshold: int = setting(
        100, "OVERLIMIT answers to one address within the window that ban it", _positive)
    ban_time: float = setting(600.0, "seconds a first automatic ban lasts", _positive)
    ban_factor: float = setting(
        4.0, "each further ban of the same address lasts this many times the one before",
        lambda v: None if v >= 1 else "must be 1 or more")
    ban_max_time: float = setting(7 * 86400.0, "the longest an automatic ban lasts",
                                  _positive)
    ban_memory: float = setting(
        7 * 86400.0, "seconds after its last ban ended that an address is still a repeat "
        "offender", _not_negative)
    never_ban: list[str] = setting(
        ["127.0.0.1", "::1"], "addresses or CIDR ranges never banned nor limited (the "
        "operator's own checks)", _networks)
    src_allow: str = setting(
        "", "source allow list, one address or CIDR per line; empty or absent admits "
        "everyone (default: src_allow.ips beside the config file)")
    src_deny: str = setting(
        "", "source deny list (DENY_SRC_IP) (default: src_deny.ips beside the config file)")
    dst_deny_ips: str = setting(
        "", "destination addresses or CIDR ranges to refuse (DENY_DESTINATION) (default: "
        "dst_deny.ips beside the config file)")
    dst_deny_domains: str = setting(
        "", "destination domains to refuse, subdomains included (default: dst_deny.doms "
        "beside the config file)")
    max_connections: int = setting(
        200, "concurrent connections per source address (0: no limit); more -> 429 "
        "OVERLIMIT", _not_negative)
    max_connection_rate: int = setting(
        300, "new connections per source address per limit_period (0: no limit)",
        _not_negative)
    max_request_rate: int = setting(
        1000, "requests per source address per limit_period (0: no limit)", _not_negative)
    limit_period: float = setting(10.0, "seconds over which the rate limits count",
                                  _positive)
    front_proxies: list[str] = setting(
        [], "addresses of the operator's own front proxies, which send the PROXY protocol "
        "(v1 or v2) with the client's address; nobody else may", _networks)
    poll_interval: float = setting(
        0.1, "seconds between firewalld's reads of haproxy's per-source counters and of "
        "the list files", _positive)
    nftables: Literal["auto", "on", "off"] = setting(
        "auto", "bans also at packet level in an nftables table the node owns: auto (where "
        "nft exists and may be used), on (fail without it), off")


@dataclass(frozen=True)
class Metrics:
    enabled: bool = setting(True, "serve Prometheus metrics (watchd)")
    bind: str = setting("127.0.0.1", "address of the metrics endpoint (keep it on loopback "
                        "or behind a firewall)")
    port: int = setting(8184, "TCP port of the Prometheus text endpoint (/metrics)", _port)


@dataclass(frozen=True)
class Audit:
    file: str = setting("", "audit log file (default: state_dir/log/audit.log)")
    anonymise: bool = setting(
        True, "source addresses as a salted hash of their /24 or /48, authids truncated; "
        "false: in full")
    max_bytes: int = setting(10_000_000, "the audit log is rotated at this size", _positive)
    backups: int = setting(10, "rotated audit logs kept", _not_negative)


@dataclass(frozen=True)
class Config:
    provider: Provider = setting(doc="who runs this node")
    wallet: Wallet = setting(Wallet(), "the provider wallet paymentd watches")
    services: list[Service] = setting([], "services sold; an authid names one by its prefix")
    proxy: Proxy = setting(Proxy(), "proxy mode: haproxy front end, squid back end")
    vpn: Vpn = setting(Vpn(), "VPN mode")
    bus: Bus = setting(Bus(), "ZeroMQ bus endpoints")
    sessions: Sessions = setting(Sessions(), "session tracking and charging")
    firewall: Firewall = setting(
        Firewall(), "firewalld: source lists, per-source limits, automatic bans")
    metrics: Metrics = setting(Metrics(), "Prometheus metrics endpoint (watchd)")
    audit: Audit = setting(Audit(), "the audit log file of every change of money or access")
    state_dir: str = setting("/var/lib/lthn", "directory for the ledger, sockets and logs")
    sdp: str = setting("", "an existing Lethean sdp.json to import services from")
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "log level")
    source: str = field(default="", init=False, repr=False, compare=False)

    # --- derived values: one place, so no daemon computes them differently ---

    def atomic(self, coins: Decimal) -> int:
        return int(coins * self.wallet.units)

    def service(self, service_id: str) -> Service | None:
        key = service_id.upper()
        for svc in self.services:
            if svc.key == key:
                return svc
        return None

    @property
    def state(self) -> Path:
        return Path(self.state_dir)

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.sqlite"

    @property
    def publish_endpoint(self) -> str:
        return self.bus.publish or f"ipc://{self.state / 'run' / 'bus-publish.sock'}"

    @property
    def subscribe_endpoint(self) -> str:
        return self.bus.subscribe or f"ipc://{self.state / 'run' / 'bus-subscribe.sock'}"

    @property
    def haproxy_admin_socket(self) -> Path:
        return haproxy_contract.admin_socket_path(self)

    def list_path(self, name: str) -> Path:
        """A firewall list file: its setting, or its Lethean name beside the config file."""
        setting_name, default = LIST_FILES[name]
        value = getattr(self.firewall, setting_name)
        if value:
            return Path(value)
        base = Path(self.source).parent if self.source else self.state
        return base / default

    @property
    def audit_log_path(self) -> Path:
        return Path(self.audit.file) if self.audit.file else self.state / "log" / "audit.log"

    @property
    def vpn_management_socket(self) -> Path:
        return Path(self.vpn.management_socket) if self.vpn.management_socket \
            else self.state / "run" / "openvpn.sock"

    @property
    def vpn_clients_path(self) -> Path:
        """lthn-vpnd's snapshot of the live VPN clients, read by sessiond each tick."""
        return self.state / "run" / "vpn-clients.json"

    @property
    def certificate_path(self) -> Path:
        return Path(self.proxy.certificate) if self.proxy.certificate \
            else self.state / "tls" / "provider.pem"


def read_sdp(path: str, source: str) -> list[dict]:
    """Services from a Lethean sdp.json (its `services` list), as config mappings."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(source, "sdp", f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(source, "sdp", f"{path} is not JSON: {exc}") from None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, list):
        raise ConfigError(source, "sdp", f"{path} has no \"services\" list")
    keys = {"id", "name", "type", "cost", "firstPrePaidMinutes", "firstVerificationsNeeded",
            "subsequentPrePaidMinutes", "subsequentVerificationsNeeded", "allowRefunds",
            "downloadSpeed", "uploadSpeed"}
    out = []
    for svc in services:
        if not isinstance(svc, dict):
            raise ConfigError(source, "sdp", f"{path}: every service must be a mapping")
        out.append({k: v for k, v in svc.items() if k in keys})
    return out


def parse(data: Any, source: str) -> Config:
    """Validate plain data (from YAML) into a Config; raises ConfigError on any mistake."""
    parser = Parser(source)
    if isinstance(data, dict) and data.get("sdp"):
        sdp_services = read_sdp(str(data["sdp"]), source)
        data = dict(data)
        data["services"] = list(data.get("services") or []) + sdp_services
    config: Config = parser.parse(Config, data)
    seen: dict[str, int] = {}
    for i, svc in enumerate(config.services):
        if svc.key in seen:
            parser.fail(f"services[{i}].id",
                        f'"{svc.id}" is already used by services[{seen[svc.key]}]')
        seen[svc.key] = i
        atomic = svc.cost * config.wallet.units
        if atomic != atomic.to_integral_value():
            parser.fail(f"services[{i}].cost",
                        f"{svc.cost} is finer than one atomic unit (1/{config.wallet.units})")
    if config.firewall.ban_max_time < config.firewall.ban_time:
        parser.fail("firewall.ban_max_time", f"must not be shorter than firewall.ban_time "
                    f"({config.firewall.ban_time:g})")
    if not os.path.isabs(config.state_dir):
        parser.fail("state_dir", f'must be an absolute path (got "{config.state_dir}")')
    if config.vpn.enabled:
        _check_vpn(parser, config)
    return _with_source(config, source)


# a unix socket's path must fit sockaddr_un (108 bytes with the terminating NUL)
UNIX_SOCKET_MAX = 107


def _check_vpn(parser: Parser, config: Config) -> None:
    """What only matters once VPN mode is on (its defaults are fine while it is off)."""
    if not any(s.type == "vpn" for s in config.services):
        parser.fail("vpn.enabled", "no service has type vpn, so nobody could log in; add "
                    "one to services")
    if config.vpn.management_socket and not os.path.isabs(config.vpn.management_socket):
        parser.fail("vpn.management_socket",
                    f'must be an absolute path (got "{config.vpn.management_socket}")')
    socket_path = str(config.vpn_management_socket)
    if len(socket_path.encode()) > UNIX_SOCKET_MAX:
        parser.fail("vpn.management_socket", f"{socket_path} is {len(socket_path.encode())} "
                    f"bytes, over the {UNIX_SOCKET_MAX} a unix socket path may have; set a "
                    "shorter one")
    # these paths go into OpenVPN's config file, where quotes and line breaks mean syntax
    for key, value in (("state_dir", config.state_dir),
                       ("vpn.management_socket", config.vpn.management_socket)):
        if any(c in value for c in '"\'\\\n\r\t '):
            parser.fail(key, "must not contain spaces, quotes, backslashes or line breaks "
                        "in VPN mode (OpenVPN's config file holds it)")


def _with_source(config: Config, source: str) -> Config:
    object.__setattr__(config, "source", source)
    return config


def load(path: str | os.PathLike) -> Config:
    """Read and validate a config file. Raises ConfigError naming the file on any mistake."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"not valid YAML: {where}{problem}") from None
    if data is None:
        raise ConfigError(source, "", "the file is empty; `provider.id` at least is required")
    return parse(data, source)
