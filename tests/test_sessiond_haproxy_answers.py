"""sessiond's parsers of `show table` and `show sess`, on real haproxy 2.6 transcripts."""

from __future__ import annotations

import pytest

from services.sessiond.haproxy_answers import (
    AnswerError,
    TableReader,
    counters_entry,
    normalise_address,
    parse_sessions,
    parse_stream_table,
    parse_table,
    table_counters,
)
from tests.fixtures.transcripts import blocks

TABLE = blocks("haproxy_show_table.txt")
SESS = blocks("haproxy_show_sess.txt")
STREAMS = blocks("haproxy_show_streams.txt")


def test_transcripts_are_there():
    assert len(TABLE) >= 8 and len(SESS) >= 5 and len(STREAMS) >= 6


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


@pytest.mark.parametrize("title,expected,answer", STREAMS, ids=[b[0] for b in STREAMS])
def test_show_stream_table(title, expected, answer):
    if expected == "error":
        with pytest.raises(AnswerError):
            parse_stream_table(answer, "authid_streams")
        return
    got = [[e.authid, e.client, e.conn_cur]
           for e in parse_stream_table(answer, "authid_streams")]
    assert got == expected


def test_stream_table_clients_match_show_sess_sources():
    """What cutting relies on: the stream table's client is show sess's src, v4 and v6."""
    clients = {e.client for e in parse_stream_table(STREAMS[2][2], "authid_streams")}
    sources = {s.src for s in parse_sessions(SESS[-1][2]) if s.proto.startswith("tcp")}
    assert clients == sources


@pytest.mark.parametrize("title,expected,answer", TABLE, ids=[b[0] for b in TABLE])
def test_fast_table_parse_agrees_with_the_line_parser(title, expected, answer):
    """The tick's parser (a regex over the whole answer, #16) reads every real answer as
    parse_table does, and refuses what it refuses, and an empty answer too: a whole
    listing always has its header, so nothing is never taken for 'nobody'."""
    if expected == "error" or not answer.strip():
        with pytest.raises(AnswerError):
            table_counters(answer, "authid_sessions")
        return
    got = [[e.key, e.conn_cur, e.http_req_cnt, e.bytes_in, e.bytes_out]
           for e in (counters_entry(k, v)
                     for k, v in table_counters(answer, "authid_sessions").items())]
    assert got == expected


@pytest.mark.parametrize("answer", [
    "# table: authid_sessions, type: string, size:1048576, used:1\n"
    "0x55: key=1A00112233445566 use=1 exp=3 conn_cur=x http_req_cnt=1 bytes_in_cnt=0 "
    "bytes_out_cnt=0\n",
    "# table: authid_sessions, type: string, size:1048576, used:2\n"
    "0x55: key=1A00112233445566 use=1 exp=3 conn_cur=1 http_req_cnt=1 bytes_in_cnt=0 "
    "bytes_out_cnt=0\n0x56: key=1A00112233445577 use=1 exp=3 conn_cur=1\n",
    "# table: other, type: string, size:1048576, used:0\n",
])
def test_fast_table_parse_refuses_garbage(answer):
    with pytest.raises(AnswerError):
        table_counters(answer, "authid_sessions")


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


def listing(*entries: tuple[str, str, int, str]) -> str:
    """A `show table authid_sessions` answer of (ptr, key, exp, counters) entries."""
    lines = [f"# table: authid_sessions, type: string, size:1048576, used:{len(entries)}"]
    lines += [f"{ptr}: key={key} use=1 exp={exp} {counters}" for ptr, key, exp, counters
              in entries]
    return "\n".join(lines) + "\n\n"


def test_table_reader_reports_only_what_changed_between_answers():
    """The tick's reader (#16) compares lines without use= and exp= (exp changes every
    second on every entry): only new keys, changed counters and keys gone are reported."""
    a, b, c = "1A00000000000001", "1A00000000000002", "1A00000000000003"
    one, two = ("conn_cur=1 http_req_cnt=1 bytes_in_cnt=0 bytes_out_cnt=0",
                "conn_cur=0 http_req_cnt=1 bytes_in_cnt=600 bytes_out_cnt=554")
    reader = TableReader("authid_sessions")
    assert reader.read(listing(("0x1", a, 900, one), ("0x2", b, 800, one))) == (
        {a: None, b: None}, set())
    # the same entries a second later: nothing
    assert reader.read(listing(("0x1", a, 899, one), ("0x2", b, 799, one))) == ({}, set())
    # a's tunnel closed, c new
    assert reader.read(listing(("0x1", a, 898, two), ("0x2", b, 798, one),
                               ("0x3", c, 999, one))) == ({a: one, c: None}, set())
    assert reader.counters == {a: two, b: one, c: one}
    # b expired; c's entry made again (another pointer) with the same counters
    assert reader.read(listing(("0x1", a, 897, two), ("0x4", c, 999, one))) == ({}, {b})
    assert reader.read(listing(("0x1", a, 896, two), ("0x4", c, 998, one))) == ({}, set())
    assert reader.counters == {a: two, c: one}
    # b back, from zero
    assert reader.read(listing(("0x1", a, 895, two), ("0x5", b, 999, one),
                               ("0x4", c, 997, one))) == ({b: None}, set())
    assert reader.read(listing()) == ({}, {a, b, c}) and reader.counters == {}


@pytest.mark.parametrize("garbage", [
    "0x9: key=1A00000000000009 use=1 exp=5 conn_cur=x http_req_cnt=1 bytes_in_cnt=0 "
    "bytes_out_cnt=0",
    "0x9: key=1A00000000000009 conn_cur=1 http_req_cnt=1 bytes_in_cnt=0 bytes_out_cnt=0",
    "0x9: key=1A00000000000009 use=1 exp=5 conn_cur=1 http_req_cnt=1",
    "hello",
])
def test_table_reader_refuses_a_garbage_line_and_keeps_what_it_knew(garbage):
    """An answer with a line that is no entry is an AnswerError, even when every other
    line is known; the reader then reads the next answer as if that one never came."""
    a = "1A00000000000001"
    one = "conn_cur=1 http_req_cnt=1 bytes_in_cnt=0 bytes_out_cnt=0"
    reader = TableReader("authid_sessions")
    reader.read(listing(("0x1", a, 900, one)))
    good = listing(("0x1", a, 899, one))
    with pytest.raises(AnswerError):
        reader.read(good.rstrip("\n") + "\n" + garbage + "\n")
    with pytest.raises(AnswerError):
        reader.read(good.replace("# table: authid_sessions", "# table: other"))
    assert reader.read(good) == ({}, set()) and reader.counters == {a: one}


@pytest.mark.parametrize("size", [1, 7, 60, 1 << 16])
def test_table_reader_reads_chunks_as_they_come_wherever_they_are_cut(size):
    """sessiond reads haproxy's answer while it is written (HaproxyAdmin.answer_chunks):
    chunk boundaries anywhere (mid-line, mid-header) change nothing."""
    keys = [f"1A{i:014X}" for i in range(30)]
    counters = "conn_cur=1 http_req_cnt={} bytes_in_cnt=0 bytes_out_cnt=0"
    answers = [listing(*[(f"0x{i}", k, 900 - t, counters.format(i % (t + 1)))
                         for i, k in enumerate(keys) if (i + t) % 7]) for t in range(4)]
    whole, chunked = TableReader("authid_sessions"), TableReader("authid_sessions")
    for answer in answers:
        data = answer.encode()
        parts = [data[i:i + size] for i in range(0, len(data), size)]
        assert chunked.read_chunks(iter(parts)) == whole.read(answer)
        assert chunked.counters == whole.counters
    bad = answers[0].replace("conn_cur=1", "conn_cur=x", 1).encode()
    with pytest.raises(AnswerError):
        chunked.read_chunks(iter([bad[i:i + size] for i in range(0, len(bad), size)]))
    assert chunked.read(answers[-1]) == ({}, set())


def test_touched_listings_report_what_a_whole_read_would():
    """read_touched (#16) takes `data.conn_cur eq 0` and `data.gpt0 ge <t>` listings: an
    entry in neither is unchanged if it was live, gone if it was idle; an entry in both
    is taken from the later; listings that do not add up to their `used:` count give
    None and change nothing."""
    a, b, c = "1A00000000000001", "1A00000000000002", "1A00000000000003"
    live, idle = ("conn_cur=1 http_req_cnt=1 bytes_in_cnt=0 bytes_out_cnt=0",
                  "conn_cur=0 http_req_cnt=2 bytes_in_cnt=600 bytes_out_cnt=554")

    def listed(used: int, *entries: tuple[str, str]) -> str:
        return listing(*[("0x1", key, 900, f"gpt0=1700000000 {counters}")
                         for key, counters in entries]).replace(
            f"used:{len(entries)}", f"used:{used}")

    reader = TableReader("authid_sessions")
    assert reader.read(listed(2, (a, live), (b, idle))) == ({a: None, b: None}, set())
    assert reader.touch_stored
    # nothing new: a (live, quiet) is in neither listing, b (idle) in the first
    assert reader.read_touched(listed(2, (b, idle)), listed(2)) == ({}, set())
    # c opens and b expires
    assert reader.read_touched(listed(2), listed(2, (c, live))) == ({c: None}, {b})
    # a ends (idle, new counters), also listed as touched: one change
    assert reader.read_touched(listed(2, (a, idle)), listed(2, (a, idle))) == ({a: live},
                                                                               set())
    assert reader.counters == {a: idle, c: live}
    # a count that does not add up (an entry unseen), or two counts: None, nothing kept
    assert reader.read_touched(listed(3, (a, idle)), listed(3)) is None
    assert reader.read_touched(listed(2, (a, idle)), listed(3)) is None
    assert reader.counters == {a: idle, c: live}
    with pytest.raises(AnswerError):
        reader.read_touched(listed(2, (a, idle)), "Unknown table\n")
    with pytest.raises(AnswerError):
        reader.read_touched(listed(2, (a, "conn_cur=x")), listed(2))
    # a whole read afterwards agrees
    assert reader.read(listed(2, (a, idle), (c, live))) == ({}, set())


def test_the_idle_keys_follow_every_read():
    """read_touched finds expired entries among the keys known idle (TableReader.idle),
    kept in step by whole and filtered reads alike."""
    a, b = "1A00000000000001", "1A00000000000002"
    live, idle = ("conn_cur=1 http_req_cnt=1 bytes_in_cnt=0 bytes_out_cnt=0",
                  "conn_cur=0 http_req_cnt=1 bytes_in_cnt=5 bytes_out_cnt=5")
    reader = TableReader("authid_sessions")
    reader.read(listing(("0x1", a, 9, live), ("0x2", b, 9, idle)))
    assert reader.idle == {b}
    reader.read(listing(("0x1", a, 8, idle), ("0x2", b, 8, idle)))
    assert reader.idle == {a, b}
    reader.read(listing(("0x1", a, 7, live)))
    assert reader.idle == set() and reader.counters == {a: live}
