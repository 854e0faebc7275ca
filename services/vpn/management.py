"""Parser of OpenVPN's management stream, as lthn-vpnd reads it (issue #18, STYLE habit 8).

One parser, fed bytes as they arrive, returning events; tested on real transcripts
(tests/transcripts/openvpn_management.txt). What OpenVPN sends:

    >CLIENT:CONNECT,CID,KID     a login to decide (also REAUTH: a renegotiation),
    >CLIENT:ENV,name=value      then its environment, one variable a line,
    >CLIENT:ENV,END             up to this line (ESTABLISHED,CID and DISCONNECT,CID too)
    >CLIENT:ADDRESS,CID,ADDR,PRIMARY    >BYTECOUNT_CLI:CID,RX,TX    >HOLD:...  >INFO:...
    SUCCESS: ... / ERROR: ...   the answer to a one-line command
    lines ... END               the answer to `status 3` and other listings

Everything in a block came from OpenVPN, but some of it from the client (username,
password): a block that is not whole (a line that is not an ENV line, a repeated
variable, too many lines, a line too long) is still returned, with `problem` saying why,
so a login is denied rather than left unanswered. Nothing here sends anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LINE = 16384        # bytes; OpenVPN's own lines are a few hundred at most
MAX_ENV = 512           # ENV lines in one block (a login has ~30)
MAX_LISTING = 100_000   # lines in one listing (status 3 has ~2 per client)

CLIENT_BLOCKS = {"CONNECT": "connect", "REAUTH": "reauth", "ESTABLISHED": "established",
                 "DISCONNECT": "disconnect", "CR_RESPONSE": "cr_response"}
WITH_KID = {"connect", "reauth", "cr_response"}


@dataclass(frozen=True)
class ClientBlock:
    """A >CLIENT: notification and its environment."""
    kind: str                       # connect, reauth, established, disconnect, cr_response
    cid: int
    kid: int | None
    env: dict[str, str] = field(default_factory=dict)
    problem: str = ""               # why the block cannot be trusted ("" when it is whole)

    def summary(self) -> dict:
        out: dict = {"event": self.kind, "cid": self.cid}
        if self.kid is not None:
            out["kid"] = self.kid
        for key in ("username", "password", "untrusted_ip", "trusted_ip", "trusted_port",
                    "bytes_received", "bytes_sent"):
            if key in self.env:
                out[key] = self.env[key]
        out["problem"] = self.problem
        return out


@dataclass(frozen=True)
class ClientAddress:
    cid: int
    address: str
    primary: bool

    def summary(self) -> dict:
        return {"event": "address", "cid": self.cid, "address": self.address,
                "primary": self.primary}


@dataclass(frozen=True)
class ByteCount:
    """Cumulative bytes of one client: `received` from it, `sent` to it."""
    cid: int
    received: int
    sent: int

    def summary(self) -> dict:
        return {"event": "bytecount", "cid": self.cid, "received": self.received,
                "sent": self.sent}


@dataclass(frozen=True)
class Notice:
    """Any other real-time line (>INFO:, >HOLD:, >NOTIFY:, >FATAL:, >LOG:, ...)."""
    source: str
    text: str

    def summary(self) -> dict:
        return {"event": "notice", "source": self.source, "text": self.text}


@dataclass(frozen=True)
class Reply:
    """The answer to a one-line command."""
    ok: bool
    text: str

    def summary(self) -> dict:
        return {"event": "reply", "ok": self.ok, "text": self.text}


@dataclass(frozen=True)
class Listing:
    """A multi-line answer, without its END line."""
    lines: tuple[str, ...]
    problem: str = ""

    def summary(self) -> dict:
        return {"event": "listing", "lines": len(self.lines), "problem": self.problem}


@dataclass(frozen=True)
class Garbage:
    """A line that means nothing here; the text says why."""
    line: str
    why: str

    def summary(self) -> dict:
        return {"event": "garbage", "why": self.why}


Event = ClientBlock | ClientAddress | ByteCount | Notice | Reply | Listing | Garbage
ANSWERS = (Reply, Listing)


def _ints(text: str, count: int) -> list[int] | None:
    parts = text.split(",")
    if len(parts) != count or not all(p.isdigit() and len(p) < 20 for p in parts):
        return None
    return [int(p) for p in parts]


class _Block:
    def __init__(self, kind: str, cid: int, kid: int | None) -> None:
        self.kind, self.cid, self.kid = kind, cid, kid
        self.env: dict[str, str] = {}
        self.lines = 0
        self.problem = ""

    def spoil(self, why: str) -> None:
        if not self.problem:
            self.problem = why

    def done(self) -> ClientBlock:
        return ClientBlock(self.kind, self.cid, self.kid, self.env, self.problem)


class Parser:
    """Feed bytes, get events. Keeps the partial line, block and listing between feeds."""

    def __init__(self) -> None:
        self.buffer = b""
        self.skipping = False           # inside a line longer than MAX_LINE
        self.block: _Block | None = None
        self.listing: list[str] | None = None
        self.listing_problem = ""

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    self.buffer = b""
                    if not self.skipping:
                        self.skipping = True
                        events += self._overlong()
                return events
            raw, self.buffer = self.buffer[:end], self.buffer[end + 1:]
            if self.skipping:
                self.skipping = False   # the rest of the over-long line: already reported
                continue
            if len(raw) > MAX_LINE:
                events += self._overlong()
                continue
            events += self._line(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def _overlong(self) -> list[Event]:
        why = f"a line over {MAX_LINE} bytes"
        if self.block is not None:
            self.block.spoil(why)
            return []
        if self.listing is not None:
            self.listing_problem = self.listing_problem or why
            return []
        return [Garbage("", why)]

    def _line(self, line: str) -> list[Event]:
        if self.block is not None:
            return self._block_line(line)
        if line.startswith(">"):
            if self.listing is not None:
                # a real-time line never arrives inside an answer; if it does, the
                # answer is cut short and says so
                self.listing_problem = self.listing_problem or "interrupted by " + line[:40]
            return self._realtime(line)
        if self.listing is None and line.startswith(("SUCCESS:", "ERROR:")):
            ok = line.startswith("SUCCESS:")
            return [Reply(ok, line.partition(":")[2].strip())]
        if line == "END":
            if self.listing is None:
                return [Listing(())]   # an empty listing (e.g. `log 0` with no lines)
            done = Listing(tuple(self.listing), self.listing_problem)
            self.listing, self.listing_problem = None, ""
            return [done]
        if self.listing is None:
            self.listing = []
        if len(self.listing) < MAX_LISTING:
            self.listing.append(line)
        else:
            self.listing_problem = self.listing_problem or f"over {MAX_LISTING} lines"
        return []

    def _block_line(self, line: str) -> list[Event]:
        block = self.block
        assert block is not None
        if line == ">CLIENT:ENV,END":
            self.block = None
            return [block.done()]
        if not line.startswith(">CLIENT:ENV,"):
            if line.startswith(">"):
                # another notification before END: the block is cut short; answer it
                # (denied, as it is not whole) and read the line for what it is
                block.spoil("interrupted by " + line[:40])
                self.block = None
                return [block.done(), *self._line(line)]
            block.spoil("a line that is not an ENV line")
            return []
        block.lines += 1
        if block.lines > MAX_ENV:
            block.spoil(f"over {MAX_ENV} ENV lines")
            return []
        name, sep, value = line[len(">CLIENT:ENV,"):].partition("=")
        if not sep or not name:
            block.spoil("an ENV line without name=value")
        elif name in block.env:
            block.spoil(f"{name[:40]} given twice")
        else:
            block.env[name] = value
        return []

    def _realtime(self, line: str) -> list[Event]:
        source, sep, text = line[1:].partition(":")
        if not sep:
            return [Garbage(line, "a real-time line without a source")]
        if source == "CLIENT":
            what, _, rest = text.partition(",")
            if what in CLIENT_BLOCKS:
                kind = CLIENT_BLOCKS[what]
                if kind == "cr_response":
                    rest = rest.rsplit(",", 1)[0] if rest.count(",") >= 2 else rest
                numbers = _ints(rest, 2 if kind in WITH_KID else 1)
                if numbers is None:
                    return [Garbage(line, f"bad client id in >CLIENT:{what}")]
                self.block = _Block(kind, numbers[0], numbers[1] if len(numbers) > 1 else None)
                return []
            if what == "ADDRESS":
                parts = rest.split(",")
                if len(parts) == 3 and parts[0].isdigit():
                    return [ClientAddress(int(parts[0]), parts[1], parts[2] == "1")]
                return [Garbage(line, "bad >CLIENT:ADDRESS")]
            if what == "ENV":
                return [Garbage(line, "an ENV line outside a block")]
            return [Notice(source, text)]
        if source == "BYTECOUNT_CLI":
            numbers = _ints(text, 3)
            if numbers is None:
                return [Garbage(line, "bad >BYTECOUNT_CLI")]
            return [ByteCount(*numbers)]
        return [Notice(source, text)]


# --- `status 3` ---

@dataclass(frozen=True)
class StatusClient:
    """One CLIENT_LIST row of `status 3`."""
    cid: int
    username: str
    source: str              # real address, ip:port
    address: str             # virtual (tunnel) address
    received: int
    sent: int
    since: float             # unix time


STATUS_COLUMNS = {"Username": "username", "Real Address": "source",
                  "Virtual Address": "address", "Bytes Received": "received",
                  "Bytes Sent": "sent", "Connected Since (time_t)": "since",
                  "Client ID": "cid"}


class StatusError(ValueError):
    """The listing is not a `status 3` answer."""


def parse_status(lines: tuple[str, ...] | list[str]) -> list[StatusClient]:
    """CLIENT_LIST rows of a `status 3` listing, by the column names of its HEADER line."""
    columns: dict[str, int] | None = None
    clients = []
    for line in lines:
        cells = line.split("\t")
        if cells[:2] == ["HEADER", "CLIENT_LIST"]:
            columns = {STATUS_COLUMNS[name]: i - 1 for i, name in enumerate(cells)
                       if name in STATUS_COLUMNS}
            if len(columns) != len(STATUS_COLUMNS):
                raise StatusError(f"HEADER CLIENT_LIST lacks columns: {line[:120]!r}")
        elif cells[0] == "CLIENT_LIST":
            if columns is None:
                raise StatusError("CLIENT_LIST before its HEADER")
            try:
                values = {k: cells[i] for k, i in columns.items()}
                clients.append(StatusClient(
                    cid=int(values["cid"]), username=values["username"],
                    source=values["source"], address=values["address"],
                    received=int(values["received"]), sent=int(values["sent"]),
                    since=float(values["since"])))
            except (IndexError, ValueError) as exc:
                raise StatusError(f"bad CLIENT_LIST row {line[:120]!r}: {exc}") from None
    if columns is None and not any(line.startswith("TITLE\t") for line in lines):
        raise StatusError("not a status 3 answer")
    return clients
