"""haproxy's per-source counters, as firewalld reads them (issue #17).

haproxy counts every refusal against its source itself (lthn/haproxy/contract.py: the
`lthn_sources` stick table, one `gpc` slot per refusal kind and slot 0 for every offence),
so no count depends on a datagram reaching Python. firewalld asks only for the sources
over the lowest threshold:

    show table lthn_sources data.gpc_rate ge 20

and parses lines like (tests/transcripts/haproxy_show_sources.txt):

    0x55d0c8a1b2c0: key=::ffff:127.0.0.2 use=0 exp=119000 conn_rate(10000)=3 conn_cur=0
    http_req_rate(10000)=50 gpc0=50 gpc1=50 ... gpc0_rate(60000)=50 gpc1_rate(60000)=50 ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lthn.haproxy import contract
from lthn.refusals import RefusalKind
from lthn.source_policy import parse_address

_PAIR = re.compile(r"([a-z0-9_]+(?:\(\d+\))?)=(\S*)")
_RATE = re.compile(r"^gpc(\d+)_rate\(\d+\)$")
_COUNT = re.compile(r"^gpc(\d+)$")
_ERRORS = ("Unknown", "Filter entry", "Data type", "Require", "Permission denied", "Missing")


class TableAnswerError(ValueError):
    """haproxy answered `show table` with an error instead of entries."""


@dataclass(frozen=True)
class SourceCounters:
    """One source's line: offences in the window per kind, and since it was first seen."""
    source: str                   # canonical address text (IPv4 clients as IPv4)
    in_window: dict[RefusalKind, int] = field(default_factory=dict)
    total: dict[RefusalKind, int] = field(default_factory=dict)
    offences: int = 0             # every offence in the window (slot 0)
    conn_cur: int = 0
    requests: int = 0             # requests in the limit period


def parse_show_table(answer: str) -> list[SourceCounters]:
    """Every entry of a `show table lthn_sources ...` answer."""
    by_slot = {slot: kind for kind, slot in contract.OFFENCE_SLOTS.items()}
    out = []
    for line in answer.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(_ERRORS):
            raise TableAnswerError(line)
        if not line.startswith("0x"):
            raise TableAnswerError(f"unexpected show table line {line[:80]!r}")
        values = dict(_PAIR.findall(line))
        if "key" not in values:
            raise TableAnswerError(f"show table line without key {line[:80]!r}")
        in_window: dict[RefusalKind, int] = {}
        total: dict[RefusalKind, int] = {}
        offences = 0
        for name, value in values.items():
            rate, count = _RATE.match(name), _COUNT.match(name)
            if not value.isdigit() or not (rate or count):
                continue
            slot = int((rate or count).group(1))  # type: ignore[union-attr]
            if rate and slot == contract.OFFENCE_TOTAL_SLOT:
                offences = int(value)
            elif slot in by_slot:
                (in_window if rate else total)[by_slot[slot]] = int(value)
        req = next((v for k, v in values.items() if k.startswith("http_req_rate")), "0")
        out.append(SourceCounters(
            source=str(parse_address(values["key"])), in_window=in_window, total=total,
            offences=offences, conn_cur=int(values.get("conn_cur", "0") or 0),
            requests=int(req) if req.isdigit() else 0))
    return out
