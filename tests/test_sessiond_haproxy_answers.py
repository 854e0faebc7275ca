"""sessiond's parsers of `show table` and `show sess`, on real haproxy 2.6 transcripts."""

from __future__ import annotations

import pytest

from services.sessiond.haproxy_answers import (
    AnswerError,
    normalise_address,
    parse_sessions,
    parse_table,
)
from tests.fixtures.transcripts import blocks

TABLE = blocks("haproxy_show_table.txt")
SESS = blocks("haproxy_show_sess.txt")


def test_transcripts_are_there():
    assert len(TABLE) >= 8 and len(SESS) >= 4


@pytest.mark.parametrize("title,expected,answer", TABLE, ids=[b[0] for b in TABLE])
def test_show_table(title, expected, answer):
    if expected == "error":
        with pytest.raises(AnswerError):
            parse_table(answer, "authid_sessions")
        return
    got = [[e.key, e.conn_cur, e.http_req_cnt, e.bytes_in, e.bytes_out]
           for e in parse_table(answer, "authid_sessions")]
    assert got == expected


@pytest.mark.parametrize("title,expected,answer", SESS, ids=[b[0] for b in SESS])
def test_show_sess(title, expected, answer):
    if expected == "error":
        with pytest.raises(AnswerError):
            parse_sessions(answer)
        return
    assert [[s.ptr, s.proto, s.src] for s in parse_sessions(answer)] == expected


def test_table_of_another_name_is_refused():
    answer = TABLE[1][2]
    with pytest.raises(AnswerError):
        parse_table(answer, "other_table")


@pytest.mark.parametrize("answer", [
    "# table: authid_sessions, type: string, size:1048576, used:1\n"
    "0x55: key=1A00112233445566 use=1 exp=3 conn_cur=x http_req_cnt=1 bytes_in_cnt=0 "
    "bytes_out_cnt=0\n",
    "# table: authid_sessions, type: string, size:1048576, used:1\n"
    "0x55: key=1A00112233445566 use=1 exp=3 http_req_cnt=1 bytes_in_cnt=0 bytes_out_cnt=0\n",
    "# table: authid_sessions, type: string, size:1048576, used:1\nhello\n",
])
def test_table_garbage_is_an_error(answer):
    with pytest.raises(AnswerError):
        parse_table(answer, "authid_sessions")


def test_show_sess_empty_or_garbage_is_an_error():
    for answer in ("", "\n\n", "Permission denied\n", "0x1: proto=tcpv4 fe=fe\n"):
        with pytest.raises(AnswerError):
            parse_sessions(answer)


def test_addresses_normalise_the_same_way_from_log_and_show_sess():
    assert normalise_address("::ffff:127.0.0.1", "80") == "127.0.0.1:80"
    assert normalise_address("0:0:0:0:0:0:0:1", 5) == "::1:5"
    line = "0x1: proto=tcpv6 src=::1:4000 fe=fe be=be srv=o ts=00\n"
    assert parse_sessions(line)[0].src == normalise_address("::1", 4000)
