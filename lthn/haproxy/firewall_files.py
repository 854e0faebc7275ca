"""The firewall's files haproxy (and squid) load at start (issue #17): the runtime ACL
files of the operator's lists and the bans map, rendered here for lthn-haproxy and
lthn-squid (before they start) and for firewalld (which then keeps haproxy's copies in
memory equal to them over the admin socket). Paths and meanings: lthn/haproxy/contract.py.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping

from lthn.address_lists import ListKind, ListUnreadable, read_list
from lthn.config import Config
from lthn.files import write_atomically
from lthn.haproxy import contract

EVERYONE = ("0.0.0.0/0", "::/0")
# squid warns at every start about an empty ACL file: an empty destination list holds one
# entry no destination can match instead ("this network", refused anyway by the
# destination policy; a name under .invalid, which never resolves)
NO_DESTINATION_IP = ("0.0.0.0/32",)
NO_DESTINATION_NAME = (".empty.lthn.invalid",)
# the operator's lists (Config.list_path) and what each holds
LIST_KINDS = {"src_allow": ListKind.ADDRESSES, "src_deny": ListKind.ADDRESSES,
              "dst_deny_ips": ListKind.ADDRESSES, "dst_deny_domains": ListKind.DOMAINS}


def acl_texts(lists: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """The run files of the firewall ACLs (contract.FIREWALL_ACLS) from the operator's
    lists {"src_allow": (...), "src_deny": ..., "dst_deny_ips": ..., "dst_deny_domains":
    ...}."""
    entries = acl_entries(lists)
    return {name: "".join(f"{e}\n" for e in values) for name, values in entries.items()}


def acl_entries(lists: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    allow = tuple(lists.get("src_allow", ()))
    domains = tuple(lists.get("dst_deny_domains", ()))
    return {
        "src_deny": tuple(lists.get("src_deny", ())),
        "src_allow": allow or EVERYONE,
        "ban_exempt": allow,
        "dst_deny_ips": tuple(lists.get("dst_deny_ips", ())) or NO_DESTINATION_IP,
        "dst_deny_domains": domains,
        "dst_deny_subdomains": tuple("." + d for d in domains) or NO_DESTINATION_NAME,
    }


def map_expiry(expires: float) -> int:
    """haproxy compares whole seconds (`date`): rounded up, a ban never ends early."""
    return math.ceil(expires)


def bans_map_text(bans: Mapping[str, float]) -> str:
    return "".join(f"{ip} {map_expiry(expires)}\n" for ip, expires in sorted(bans.items()))


def table_key(source: str) -> str:
    """The `lthn_sources` key (type ipv6) of a source address: IPv4 as ::ffff:a.b.c.d."""
    address = ipaddress.ip_address(source)
    return f"::ffff:{address}" if address.version == 4 else str(address)


def write_run_files(config: Config, lists: Mapping[str, tuple[str, ...]],
                    bans: Mapping[str, float] | None = None) -> None:
    """What haproxy loads at start; `lists` may name only some lists (the others' files
    are left as they are, or made empty when missing)."""
    for name, text in acl_texts(lists).items():
        path = contract.source_acl_path(config, name)
        source = _ACL_SOURCE[name]
        if source in lists or not path.exists():
            write_atomically(path, text, mode=0o600)
    if bans is not None:
        write_atomically(contract.bans_map_path(config), bans_map_text(bans), mode=0o600)


# which operator list each ACL file comes from
_ACL_SOURCE = {"src_deny": "src_deny", "src_allow": "src_allow", "ban_exempt": "src_allow",
               "dst_deny_ips": "dst_deny_ips", "dst_deny_domains": "dst_deny_domains",
               "dst_deny_subdomains": "dst_deny_domains"}


def prepare_run_files(config: Config, bans: Mapping[str, float] | None) -> list[str]:
    """Before haproxy or squid starts (lthn-haproxy, lthn-squid): the lists from the
    operator's files and (for haproxy) the bans in force. A list file that cannot be read
    keeps the run file firewalld wrote last (its last good list). Returns what to tell the
    operator (malformed lines, unreadable files)."""
    notes: list[str] = []
    lists: dict[str, tuple[str, ...]] = {}
    for name, kind in LIST_KINDS.items():
        try:
            parsed = read_list(config.list_path(name), kind)
        except ListUnreadable as exc:
            notes.append(f"{exc}; haproxy starts with its last good list")
            continue
        lists[name] = parsed.entries
        notes += [f"{problem}; line skipped" for problem in parsed.problems]
    write_run_files(config, lists, bans)
    return notes


