"""May this source address connect? The one decision haproxy's rules make in proxy mode
(issue #17), as a pure function for every other door (VPN auth):

1. banned (a ban in force covers it) and not exempt -> BANNED;
2. in the deny list -> DENY_SRC_IP;
3. a non-empty allow list without it -> DENY_SRC_IP (an empty allow list admits everyone);
4. otherwise admitted (None).

Exempt from bans: the never-ban list (`firewall.never_ban`) and the explicit entries of the
allow list ("the allow list always wins"). `may_ban` says whether firewalld may ban an
address at all.

    policy = SourcePolicy.load(config, ledger)     # lists from their files, bans from the ledger
    refusal = policy.decide("203.0.113.7", time.time())
    verdict = policy.verdict("203.0.113.7", time.time())   # the same, and which rule
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from lthn.address_lists import ListKind, ListUnreadable, Network, networks, read_list
from lthn.refusals import Refusal

if TYPE_CHECKING:
    from lthn.config import Config
    from lthn.ledger import Ledger

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address:
    """A source address as haproxy or OpenVPN print it: `203.0.113.7`, `::ffff:203.0.113.7`
    (an IPv4 client on an IPv6 socket, taken as the IPv4 address), `[2001:db8::1]`."""
    address = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _covers(nets: Iterable[Network], address: Address) -> bool:
    return any(address.version == n.version and address in n for n in nets)


class Rule(Enum):
    """Which rule refused a source, in words for a log line."""
    DENIED = "is in the source deny list"
    NOT_ALLOWED = "is not in the source allow list"
    BANNED = "is banned"


@dataclass(frozen=True)
class Verdict:
    refusal: Refusal
    rule: Rule
    ban: Network | None = None     # the ban in force that covers the source (BANNED)


@dataclass(frozen=True)
class SourcePolicy:
    deny: tuple[Network, ...] = ()
    allow: tuple[Network, ...] = ()       # empty: everyone may connect
    never_ban: tuple[Network, ...] = ()
    bans: Mapping[Network, float] = field(default_factory=dict)   # network -> expires

    @classmethod
    def of(cls, deny: Iterable[str] = (), allow: Iterable[str] = (),
           never_ban: Iterable[str] = (), bans: Mapping[str, float] | None = None
           ) -> SourcePolicy:
        return cls(tuple(networks(list(deny))), tuple(networks(list(allow))),
                   tuple(networks(list(never_ban))),
                   {ipaddress.ip_network(k, strict=False): v for k, v in (bans or {}).items()})

    def exempt(self, address: Address) -> bool:
        """Never banned: in the never-ban list or named by the allow list."""
        return _covers(self.never_ban, address) or _covers(self.allow, address)

    def may_ban(self, source: str) -> bool:
        return not self.exempt(parse_address(source))

    def decide(self, source: str, now: float) -> Refusal | None:
        """The refusal for `source` at `now`, or None when it may connect."""
        verdict = self.verdict(source, now)
        return None if verdict is None else verdict.refusal

    def verdict(self, source: str, now: float) -> Verdict | None:
        """`decide`, with which rule refused (for a log line), or None when it may
        connect."""
        address = parse_address(source)
        # haproxy's order (services/proxy/haproxy_config.source_rules): bans first
        if not self.exempt(address):
            for network, expires in self.bans.items():
                if expires > now and address.version == network.version \
                        and address in network:
                    return Verdict(Refusal.BANNED, Rule.BANNED, network)
        if _covers(self.deny, address):
            return Verdict(Refusal.DENY_SRC_IP, Rule.DENIED)
        if self.allow and not _covers(self.allow, address):
            return Verdict(Refusal.DENY_SRC_IP, Rule.NOT_ALLOWED)
        return None

    @classmethod
    def load(cls, config: Config, ledger: Ledger, now: float | None = None) -> SourcePolicy:
        """The lists from their files, read once (an unreadable one counts as empty here:
        the daemons, which watch the files, keep the last good list and say so:
        lthn/list_files.py) and the bans in force."""
        lists = {}
        for name in ("src_deny", "src_allow"):
            try:
                lists[name] = read_list(config.list_path(name), ListKind.ADDRESSES).entries
            except ListUnreadable:
                lists[name] = ()
        at = time.time() if now is None else now
        return cls.of(lists["src_deny"], lists["src_allow"], config.firewall.never_ban,
                      {b.ip: b.expires for b in ledger.bans(at)})
