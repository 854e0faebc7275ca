"""The OpenVPN management parser on real transcripts (tests/transcripts/
openvpn_management.txt, STYLE habit 8), fed whole and in pieces, plus the limits that keep a
client's bytes from spilling into the protocol (issue #18)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.vpn import management
from services.vpn.management import MAX_ENV, MAX_LINE, Parser, StatusError, parse_status
from tests.fixtures.transcripts import blocks

BLOCKS = blocks("openvpn_management.txt")


def text_of(raw: str) -> bytes:
    return (raw.rstrip("\n") + "\n").encode()


def events(data: bytes, cuts: list[int] | None = None) -> list[dict]:
    parser = Parser()
    out = []
    start = 0
    for cut in sorted(cuts or []):
        out += parser.feed(data[start:cut])
        start = cut
    out += parser.feed(data[start:])
    return [e.summary() for e in out]


@pytest.mark.parametrize("title,expected,raw", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_transcript_block(title, expected, raw):
    assert events(text_of(raw)) == expected


ALL = b"".join(text_of(raw) for _, _, raw in BLOCKS)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(ALL)), max_size=40))
def test_feeding_in_pieces_gives_the_same_events(cuts):
    """Bytes arrive as the socket delivers them: split anywhere, same events."""
    assert events(ALL, cuts) == [e for _, expected, _ in BLOCKS for e in expected]


CONNECT = next(raw for title, _, raw in BLOCKS if title == "a login")


def test_a_too_long_username_spoils_the_block_not_the_stream():
    long_line = ">CLIENT:ENV,username=" + "A" * (MAX_LINE + 10)
    data = CONNECT.replace(">CLIENT:ENV,username=1A00112233445566", long_line)
    got = events(text_of(data) + b">BYTECOUNT_CLI:0,1,2\n")
    assert got[0]["event"] == "connect" and "username" not in got[0]
    assert got[0]["problem"] == f"a line over {MAX_LINE} bytes"
    assert got[1] == {"event": "bytecount", "cid": 0, "received": 1, "sent": 2}


def test_too_many_env_lines_spoil_the_block():
    filler = "".join(f">CLIENT:ENV,X{i}=1\n" for i in range(MAX_ENV + 1))
    data = CONNECT.replace(">CLIENT:ENV,END", filler + ">CLIENT:ENV,END")
    (block,) = events(text_of(data))
    assert block["problem"] == f"over {MAX_ENV} ENV lines"


def test_an_overlong_line_outside_a_block_is_garbage_once():
    got = events(b"x" * (3 * MAX_LINE) + b"\nSUCCESS: ok\n", cuts=[MAX_LINE // 2, MAX_LINE + 7])
    assert got == [{"event": "garbage", "why": f"a line over {MAX_LINE} bytes"},
                   {"event": "reply", "ok": True, "text": "ok"}]


STATUS_ONE = next(raw for title, _, raw in BLOCKS if title == "status 3 with one client")


def test_status_rows_by_column_name():
    (listing,) = Parser().feed(text_of(STATUS_ONE))
    assert isinstance(listing, management.Listing)
    (client,) = parse_status(listing.lines)
    assert client == management.StatusClient(
        cid=0, username="1A00112233445566", source="10.99.0.2:59585", address="10.98.0.2",
        received=1327, sent=2338, since=1796139319.0)


def test_status_without_clients_and_not_a_status():
    empty = next(raw for title, _, raw in BLOCKS if title == "status 3 with nobody connected")
    (listing,) = Parser().feed(text_of(empty))
    assert parse_status(listing.lines) == []
    with pytest.raises(StatusError):
        parse_status(["something else"])
    with pytest.raises(StatusError):
        parse_status(["TITLE\tx", "CLIENT_LIST\tA\tB"])
