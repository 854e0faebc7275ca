"""authd's parsers of haproxy's `show map`, `show info` and request-log datagrams, on real
haproxy 2.6 transcripts (tests/transcripts/, expected result above each block)."""

from __future__ import annotations

import pytest

from lthn.haproxy.contract import map_file_text
from services.authd.map_sync import (
    ProcessIdentity,
    RuntimeAnswerError,
    parse_show_info,
    parse_show_map,
)
from services.authd.refusal_events import RefusalListener
from tests.fixtures.transcripts import blocks

MAPS = blocks("haproxy_show_map.txt")
INFOS = blocks("haproxy_show_info.txt")
DATAGRAMS = blocks("haproxy_request_log.txt")


def test_transcripts_are_there():
    assert len(MAPS) >= 4 and len(INFOS) >= 2 and len(DATAGRAMS) >= 9


@pytest.mark.parametrize("title,expected,answer", MAPS, ids=[b[0] for b in MAPS])
def test_show_map(title, expected, answer):
    if expected == "error":
        with pytest.raises(RuntimeAnswerError):
            parse_show_map(answer)
    else:
        assert dict(parse_show_map(answer)) == expected


@pytest.mark.parametrize("title,expected,answer", INFOS, ids=[b[0] for b in INFOS])
def test_show_info(title, expected, answer):
    if expected == "error":
        with pytest.raises(RuntimeAnswerError):
            parse_show_info(answer)
    else:
        identity = ProcessIdentity.from_info(parse_show_info(answer))
        assert identity == ProcessIdentity(expected["pid"], expected["start"])


@pytest.fixture
def listener(free_udp_port):
    lst = RefusalListener(free_udp_port)
    yield lst
    lst.close()


@pytest.fixture
def free_udp_port():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("title,expected,datagram", DATAGRAMS, ids=[b[0] for b in DATAGRAMS])
def test_request_log_datagram_to_refusal(listener, title, expected, datagram):
    refusal = listener.refusal(datagram.rstrip("\n").encode() + b"\n", "127.0.0.1:1")
    if expected == "error":
        assert refusal is None and listener.log.bad == 1
    elif expected is None:
        assert refusal is None and listener.log.bad == 0
    else:
        assert refusal is not None
        assert {k: getattr(refusal, k) for k in expected} == expected
        assert refusal.kind == "proxy"


def test_a_datagram_that_is_not_utf8_is_still_a_refusal(listener):
    """Captured from haproxy 2.6.12: a Latin-1 Host reaches the line as it is. authd
    dropped it as not UTF-8, and the refusal vanished (issue #15)."""
    datagram = b"LTHN1 127.0.0.1 40634 - NO_PAYMENT 403 GET caf\xe9.example\n"
    refusal = listener.refusal(datagram, "127.0.0.1:1")
    assert refusal is not None and listener.log.bad == 0
    assert (refusal.reason, refusal.source, refusal.destination) == (
        "NO_PAYMENT", "127.0.0.1", "caf\\xe9.example")


def test_refusal_listener_drains_real_datagrams_and_survives_garbage(listener):
    import socket
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = listener.log.socket.getsockname()[1]
    refused = next(d for _, e, d in DATAGRAMS if isinstance(e, dict))
    for data in (b"\xff\xfe garbage", b"", refused.encode(), b"LTHN1 only three"):
        sender.sendto(data, ("127.0.0.1", port))
    sender.close()
    got = []
    from tests.fixtures.common import wait_for
    wait_for(lambda: got.extend(listener.drain()) or listener.log.bad >= 3, timeout=5,
             what="all four datagrams read")
    assert len(got) == 1 and listener.log.bad == 3


def test_map_file_is_upper_case_key_and_service():
    assert map_file_text(["1a00000000000001", "2B00000000000002"]) == \
        "1A00000000000001 1A\n2B00000000000002 2B\n"
    assert map_file_text([]) == ""
