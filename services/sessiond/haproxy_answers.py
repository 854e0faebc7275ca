"""Parsers for the haproxy runtime answers sessiond reads: `show table` of its two stick
tables (lthn/haproxy/contract.py) and `show sess`.

Tested on real transcripts (tests/transcripts/haproxy_*.txt). Anything that is not the
expected shape raises `AnswerError`, so a garbage answer is logged and retried, never
taken for "nobody is connected".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from lthn.haproxy.contract import STREAM_KEY_SEPARATOR


class AnswerError(ValueError):
    """haproxy answered something that is not the expected listing."""


@dataclass(frozen=True)
class TableEntry:
    """One entry of the authid stick table (counters are cumulative per entry)."""
    key: str
    conn_cur: int
    http_req_cnt: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class ClientStreams:
    """One entry of the stream table: a client connection admitted for an authid, and how
    many of its streams are live (an open CONNECT tunnel is one)."""
    authid: str
    client: str         # "ip:port", normalised as `Stream.src` is
    conn_cur: int


@dataclass(frozen=True)
class Stream:
    """One line of `show sess`: a stream haproxy holds, with its client address."""
    ptr: str
    proto: str
    src: str            # "ip:port" for tcp streams (ip normalised), as shown otherwise


def _fields(text: str, where: str) -> dict[str, str]:
    out = {}
    for token in text.split():
        name, sep, value = token.partition("=")
        if not sep:
            raise AnswerError(f"{where}: {token[:40]!r} is not name=value")
        out[name] = value
    return out


def _int(fields: dict[str, str], name: str, line: str) -> int:
    value = fields.get(name)
    if value is None or not value.isdigit():
        raise AnswerError(f"no {name} in {line[:100]!r}")
    return int(value)


def _table_entries(answer: str, table: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """`show table <table> [filter]` -> (line, key, fields after the key) per entry. An
    empty answer (a key filter that matched nothing) has none; anything but a header and
    entry lines is an error."""
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        return
    if not lines[0].startswith(f"# table: {table},"):
        raise AnswerError(f"not a listing of table {table}: {lines[0][:100]!r}")
    for line in lines[1:]:
        ptr, sep, rest = line.partition(": ")
        if not sep or not ptr.startswith("0x") or not rest.startswith("key="):
            raise AnswerError(f"not a table entry: {line[:100]!r}")
        # the key comes first and is what the track rule stored; the node only tracks
        # keys without spaces, but read it up to " use=" to be safe
        key, sep, counters = rest[len("key="):].partition(" use=")
        if not sep:
            raise AnswerError(f"no use= in {line[:100]!r}")
        yield line, key, _fields("use=" + counters, "table entry")


def parse_table(answer: str, table: str) -> list[TableEntry]:
    """`show table <table> [filter]` -> entries (see `_table_entries`)."""
    return [TableEntry(key=key, conn_cur=_int(fields, "conn_cur", line),
                       http_req_cnt=_int(fields, "http_req_cnt", line),
                       bytes_in=_int(fields, "bytes_in_cnt", line),
                       bytes_out=_int(fields, "bytes_out_cnt", line))
            for line, key, fields in _table_entries(answer, table)]


# one entry of `authid_sessions` as haproxy 2.6 prints it (contract.STICK_TABLE_STORE),
# less its use= and exp= fields (`_VOLATILE`: exp changes every second on every entry).
# Its counters are what is kept of it; gpt0 (when stored) is the time of its last
# request, and a listing without it (a table made before #16 stored it) reads the same
_VOLATILE = re.compile(r" use=[0-9]+ exp=[0-9]+(?= )")
_KEYS = re.compile(r"^0x[0-9a-f]+: key=(\S+) ", re.M)
_COUNTERS = re.compile(r"0x[0-9a-f]+: key=(\S+) (gpt0=\d+ )?(conn_cur=\d+ http_req_cnt=\d+ "
                       r"bytes_in_cnt=\d+ bytes_out_cnt=\d+)")
_HEADER = re.compile(r"# table: (\S+), type: \S+, size:\d+, used:(\d+)")
IDLE = "conn_cur=0 "     # how the counters of an entry without a live stream begin


class TableReader:
    """Reads successive whole `show table authid_sessions` answers, parsing only the
    entries whose line changed since the last answer (#16: 10,000 entries a tick, nearly
    all the same). `counters` is {key: its counters as printed} (`conn_cur=1
    http_req_cnt=2 bytes_in_cnt=0 bytes_out_cnt=0`) after the last `read`.

    Lines are compared with their `use=` and `exp=` fields taken out; a line not seen
    last time is parsed and checked in full, so anything but a header and entry lines is
    an AnswerError (as with `parse_table`), and the reader is then as before the read."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.counters: dict[str, str] = {}
        self.idle: set[str] = set()          # keys whose counters say no live stream
        # the entries carry the time of their last request (gpt0), as the last whole
        # read showed: only then can `read_touched` be asked
        self.touch_stored = False
        self.lines: dict[str, str] = {}      # line as compared -> its key
        self.line_of: dict[str, str] = {}    # key -> its line as compared

    def read(self, answer: str) -> tuple[dict[str, str | None], set[str]]:
        """Take the next answer: ({key whose counters changed or that is new: its
        counters before, None when new}, {keys no longer listed})."""
        return self.read_chunks([answer.encode()])

    def read_chunks(self, chunks: Iterable[bytes]) -> tuple[dict[str, str | None], set[str]]:
        """`read` of an answer as it arrives (HaproxyAdmin.answer_chunks): each chunk's
        whole lines are compared while haproxy writes the next (#16)."""
        known = self.lines
        raw: list[bytes] = []
        rest = b""
        header: str | None = None
        entries = volatile = 0
        new_lines: list[str] = []
        chunks = iter(chunks)
        while True:
            chunk = next(chunks, None)
            raw.append(chunk or b"")
            if chunk is None:
                whole, rest = rest, b""
            else:
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    rest += chunk
                    continue
                whole, rest = rest + chunk[:cut], chunk[cut + 1:]
            text, count = _VOLATILE.subn("", whole.decode(errors="replace"))
            lines = text.split("\n")
            if header is None:
                header = lines.pop(0)
                if not header.startswith(f"# table: {self.table},"):
                    self._refuse(raw, chunks)
            volatile += count
            lines = [line for line in lines if line]
            entries += len(lines)
            new_lines += [line for line in lines if line not in known]
            if chunk is None:
                break
        if volatile != entries:
            self._refuse(raw, chunks)
        parsed: dict[str, tuple[str, str]] = {}
        for line in new_lines:
            m = _COUNTERS.fullmatch(line)
            if m is None or m[1] in parsed:
                self._refuse(raw, chunks)
            parsed[m[1]] = (line, m[3])
            self.touch_stored = m[2] is not None
        # lines gone: the old line of a key listed anew, and every line of a key no
        # longer listed (only then is the whole answer looked at: an expired entry)
        gone: set[str] = set()
        if len(known) - sum(key in self.line_of for key in parsed) != entries - len(new_lines):
            gone = set(self.counters) - parsed.keys() - self._listed_keys(raw)
        return self._take(parsed, gone)

    def read_touched(self, idle: str, touched: str
                     ) -> tuple[dict[str, str | None], set[str]] | None:
        """Take two filtered listings instead of a whole one (#16: 10,000 quiet tunnels are
        not read every tick): `idle` (`data.conn_cur eq 0`: every entry without a live
        stream) and `touched` (`data.gpt0 ge <t>`: every entry with a request since t,
        contract.admitted_rules). An entry in neither had a live stream at the last read
        and has one still, with no request since t: as it was then, but for its byte
        counters (haproxy moves them as each stream ends); one that had none then and is
        in neither has expired (gone).

        Returns what `read` returns, or None, keeping what it knew, when the listings do
        not add up to the table: their `used:` counts (every entry of the table) differ
        from each other or from the entries known after them (haproxy restarted, an
        entry came and went unseen), and then only a whole read tells. Raises
        AnswerError as `read` does."""
        used: set[int] = set()
        parsed: dict[str, tuple[str, str]] = {}
        for answer in (idle, touched):    # an entry in both: the later look is kept
            text, count = _VOLATILE.subn("", answer)
            listed = [line for line in text.split("\n") if line]
            header = _HEADER.fullmatch(listed[0]) if listed else None
            if header is None or header[1] != self.table or count != len(listed) - 1:
                self._refuse([answer.encode()], iter(()))
            used.add(int(header[2]))
            for line in listed[1:]:
                m = _COUNTERS.fullmatch(line)
                if m is None:
                    self._refuse([answer.encode()], iter(()))
                parsed[m[1]] = (line, m[3])
        gone = self.idle - parsed.keys()
        if used != {len(self.counters) - len(gone) + len(parsed.keys() - self.counters.keys())}:
            return None
        return self._take(parsed, gone)

    def _take(self, parsed: dict[str, tuple[str, str]], gone: set[str]
              ) -> tuple[dict[str, str | None], set[str]]:
        """Keep `parsed` ({key: (its line as compared, its counters)}) and forget `gone`;
        returns ({key changed or new: its counters before, None when new}, gone)."""
        known = self.lines
        fresh = {key: self.counters.get(key) for key, (_, counters) in parsed.items()
                 if self.counters.get(key) != counters}
        for key, (line, counters) in parsed.items():
            old = self.line_of.get(key)
            if old is not None:
                del known[old]
            known[line] = key
            self.line_of[key] = line
            self.counters[key] = counters
            if counters.startswith(IDLE):
                self.idle.add(key)
            else:
                self.idle.discard(key)
        for key in gone:
            del known[self.line_of.pop(key)]
            del self.counters[key]
            self.idle.discard(key)
        return fresh, gone

    @staticmethod
    def _listed_keys(raw: list[bytes]) -> set[str]:
        """Every key of the answer (only when an entry has gone: an expired one)."""
        return set(_KEYS.findall(b"".join(raw).decode(errors="replace")))

    def _refuse(self, raw: list[bytes], chunks: Iterator[bytes]) -> NoReturn:
        answer = b"".join([*raw, *chunks]).decode(errors="replace")
        parse_table(answer, self.table)     # says what is wrong
        raise AnswerError(f"unexpected listing of table {self.table}: {answer[:100]!r}")


def table_counters(answer: str, table: str) -> dict[str, str]:
    """`show table authid_sessions` -> {key: its counters as printed}, read on its own
    (see TableReader). Anything but a header and entry lines is an AnswerError."""
    reader = TableReader(table)
    reader.read(answer)
    return reader.counters


def counters_entry(key: str, counters: str) -> TableEntry:
    """One `table_counters` value parsed (it matched the pattern: four numbers)."""
    conn_cur, reqs, bytes_in, bytes_out = (int(f.partition("=")[2]) for f in counters.split())
    return TableEntry(key, conn_cur, reqs, bytes_in, bytes_out)


def parse_stream_table(answer: str, table: str) -> list[ClientStreams]:
    """`show table <stream table> [filter]` -> its entries (key `<AUTHID>/<ip>:<port>`,
    contract.STREAM_KEY_SEPARATOR). An entry whose key is not of that shape is an error:
    only the node's own rule fills the table."""
    entries = []
    for line, key, fields in _table_entries(answer, table):
        authid, sep, client = key.partition(STREAM_KEY_SEPARATOR)
        ip, _, port = client.rpartition(":")
        try:
            client = normalise_address(ip, port) if sep and port.isdigit() else ""
        except ValueError:
            client = ""
        if not client:
            raise AnswerError(f"not an authid/client key: {line[:100]!r}")
        entries.append(ClientStreams(authid, client, _int(fields, "conn_cur", line)))
    return entries


def normalise_address(ip: str, port: int | str) -> str:
    """'127.0.0.1', 40648 -> '127.0.0.1:40648'; IPv6 compressed, IPv4-mapped unwrapped."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return f"{addr.compressed}:{int(port)}"


def parse_sessions(answer: str) -> list[Stream]:
    """`show sess` -> streams. haproxy always lists at least the admin stream asking."""
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        raise AnswerError("empty answer to show sess")
    streams = []
    for line in lines:
        ptr, sep, rest = line.partition(": ")
        if not sep or not ptr.startswith("0x") or not rest.startswith("proto="):
            raise AnswerError(f"not a show sess line: {line[:100]!r}")
        head = rest.split(" ", 2)
        if len(head) < 2 or not head[1].startswith("src="):
            raise AnswerError(f"no src= in {line[:100]!r}")
        proto = head[0][len("proto="):]
        src = head[1][len("src="):]
        if proto.startswith("tcp"):
            ip, _, port = src.rpartition(":")
            try:
                src = normalise_address(ip.strip("[]"), port)
            except ValueError:
                raise AnswerError(f"bad src in {line[:100]!r}") from None
        streams.append(Stream(ptr, proto, src))
    return streams
