"""The operator's list files in Lethean's format: `src_allow.ips`, `src_deny.ips`,
`dst_deny.ips` (one IPv4/IPv6 address or CIDR range per line) and `dst_deny.doms` (one
domain per line, its subdomains included). `#` starts a comment, on its own line or after
an entry; blank lines are skipped (issue #17).

Pure parsing, plus `read_list` for the file itself. A malformed line is reported with its
file and line number and skipped; the other lines still count. A file that is absent is an
empty list; one that cannot be read (permissions, not UTF-8, a directory) raises
`ListUnreadable`, so the caller keeps the last good list.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_LINE = 512
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class ListKind(Enum):
    ADDRESSES = "addresses"
    DOMAINS = "domains"


class ListUnreadable(OSError):
    """The file exists but cannot be read as a list; the text says why."""


@dataclass(frozen=True)
class Problem:
    """A malformed line: `src_deny.ips:3: "10.0.0.300" is not an IP address or CIDR range`."""
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class ParsedList:
    """What a list file says: its entries in canonical form (sorted, no duplicates) and
    the lines that were skipped."""
    entries: tuple[str, ...]
    problems: tuple[Problem, ...] = ()


def canonical_network(text: str) -> str:
    """`10.1.2.3` -> `10.1.2.3`, `10.1.2.3/24` -> `10.1.2.0/24`, `::1/128` -> `::1`;
    ValueError when it is not an address or a range."""
    network = ipaddress.ip_network(text, strict=False)
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def canonical_domain(text: str) -> str:
    """`.Example.COM.` / `*.example.com` -> `example.com`; ValueError when it is not a
    domain name (non-ASCII names are taken in their IDNA form)."""
    name = text.lower()
    if name.startswith("*."):
        name = name[2:]
    name = name.strip(".")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("not a domain name") from None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError("not a domain name")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    raise ValueError("an IP address, not a domain (put it in a .ips list)")


def parse(text: str, kind: ListKind, path: str) -> ParsedList:
    """Every line of a list file's text; see the module docstring."""
    entries: set[str] = set()
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        shown = line if len(line) <= 60 else line[:57] + "..."
        if len(raw) > MAX_LINE or len(line.split()) != 1:
            problems.append(Problem(path, number, f'"{shown}" is not one entry'))
            continue
        try:
            if kind is ListKind.ADDRESSES:
                entries.add(canonical_network(line))
            else:
                entries.add(canonical_domain(line))
        except ValueError as exc:
            what = "an IP address or CIDR range" if kind is ListKind.ADDRESSES \
                else f"a domain name ({exc})"
            problems.append(Problem(path, number, f'"{shown}" is not {what}'))
    return ParsedList(tuple(sorted(entries, key=_order)), tuple(problems))


def _order(entry: str) -> tuple:
    try:
        network = ipaddress.ip_network(entry, strict=False)
        return (network.version, int(network.network_address), network.prefixlen, "")
    except ValueError:
        return (9, 0, 0, entry)


def read_list(path: Path, kind: ListKind) -> ParsedList:
    """The list in `path`; absent -> empty. Raises ListUnreadable (keep the last good)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ParsedList(())
    except OSError as exc:
        raise ListUnreadable(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListUnreadable(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse(text, kind, str(path))


def networks(entries: tuple[str, ...] | list[str]) -> list[Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]
