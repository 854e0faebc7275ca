"""sessiond's proxy adapter and book against a real haproxy 2.6 with the node's contract
(tests/fixtures/mini_proxy.py): what a poll reports, and what a tick writes (#16)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from lthn.config import parse
from lthn.haproxy import contract
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from lthn.ports import free_port
from services.sessiond.proxy_sessions import ProxyAdapter
from services.sessiond.session_book import SessionBook
from tests.fixtures.common import read_head, wait_for
from tests.fixtures.mini_proxy import (
    ConnectOrigin,
    MiniHaproxy,
    closed_by_peer,
    open_tunnel,
    request_status,
)

AUTHID = "1A00112233445566"
OTHER = "1A66554433221100"


@pytest.fixture
def rig(tmp_path: Path):
    config = parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path / "state"),
                    "services": [{"id": "1A", "name": "p", "type": "proxy", "cost": "0.001"}],
                    "proxy": {"log_port": free_port()}}, "test.yaml")
    origin = ConnectOrigin()
    haproxy = MiniHaproxy(config, origin.port, {AUTHID: "1A", OTHER: "1A"}).start()
    ledger = Ledger.open(config.ledger_path)
    adapter = ProxyAdapter(HaproxyAdmin(contract.admin_socket_path(config)))
    yield haproxy, adapter, ledger
    ledger.close()
    haproxy.stop()
    origin.close()


def writes(ledger: Ledger) -> list[str]:
    """Every data-changing statement the ledger connection runs from now on."""
    seen: list[str] = []
    ledger.conn.set_trace_callback(
        lambda sql: seen.append(sql) if sql.lstrip().upper().startswith(
            ("INSERT", "UPDATE", "DELETE")) else None)
    return seen


def test_an_unchanged_entry_is_the_same_observation_and_costs_the_book_nothing(rig):
    haproxy, adapter, ledger = rig
    book = SessionBook("proxy", [])
    tunnel = open_tunnel(haproxy.port, AUTHID)
    first = adapter.poll(set(book.open))
    assert first[AUTHID].live and first[AUTHID].source == "127.0.0.1"
    with ledger.transaction() as tx:
        book.apply(tx, first)
    assert set(book.open) == {AUTHID}
    sql = writes(ledger)
    second = adapter.poll(set(book.open))
    assert second[AUTHID] is first[AUTHID]          # nothing happened to it
    with ledger.transaction() as tx:
        assert book.apply(tx, second) == set()
    assert sql == []                                # no row written for it
    tunnel.sendall(b"more")
    assert tunnel.recv(4) == b"more"
    tunnel.close()
    third = wait_for(lambda: (lambda seen: seen if not seen[AUTHID].live else None)(
        adapter.poll(set(book.open))), timeout=5, what="the closed tunnel seen ended")
    assert third[AUTHID].bytes_in > 0               # its final counters
    with ledger.transaction() as tx:
        assert book.apply(tx, third) == {AUTHID}
    [row] = ledger.conn.execute("SELECT bytes_in, bytes_out FROM sessions").fetchall()
    assert row == (third[AUTHID].bytes_in - third[AUTHID].base_in,
                   third[AUTHID].bytes_out - third[AUTHID].base_out)


def test_a_request_between_two_polls_is_live_once(rig):
    haproxy, adapter, _ = rig
    adapter.poll()
    assert request_status(haproxy.port, OTHER) == 200   # came and went between polls
    seen = adapter.poll()
    assert seen[OTHER].live and seen[OTHER].source == "127.0.0.1"
    assert not adapter.poll({OTHER})[OTHER].live        # nothing new since


def test_a_stream_is_keyed_by_authid_and_client_connection(rig):
    """The key's client half is made once per connection (contract.connection_rules),
    the authid joined to it per request; both authids of one connection get a key."""
    haproxy, adapter, _ = rig
    tunnel = open_tunnel(haproxy.port, AUTHID)
    with socket.create_connection(("127.0.0.1", haproxy.port), timeout=5) as sock:
        for authid in (OTHER, AUTHID):
            sock.sendall(f"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n"
                         f"X-LTHN-PaymentID: {authid}\r\n\r\n".encode())
            answer = read_head(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            while not answer.endswith(b"origin"):          # the body, before the next GET
                chunk = sock.recv(64)
                assert chunk, f"closed before the whole answer: {answer!r}"
                answer += chunk
        keys = re.findall(r"key=(\S+)", adapter.admin.command(
            f"show table {contract.STREAM_TABLE}"))
        client = sock.getsockname()[1]
        assert sorted(keys) == sorted([f"{AUTHID}/127.0.0.1:{tunnel.getsockname()[1]}",
                                       f"{OTHER}/127.0.0.1:{client}",
                                       f"{AUTHID}/127.0.0.1:{client}"])
    tunnel.close()


def test_a_restarted_adapter_counts_only_live_streams_on_its_first_poll(rig):
    haproxy, adapter, _ = rig
    assert request_status(haproxy.port, OTHER) == 200
    tunnel = open_tunnel(haproxy.port, AUTHID)
    fresh = ProxyAdapter(adapter.admin)                # as after a sessiond restart
    seen = fresh.poll()
    assert seen[AUTHID].live and not seen[OTHER].live  # old requests prove nothing
    assert fresh.cut({AUTHID}) == {AUTHID: 1}
    assert closed_by_peer(tunnel, timeout=5.0)
    tunnel.close()


def view(seen: dict) -> dict:
    return {key: (o.live, o.bytes_in, o.bytes_out) for key, o in seen.items()}


def test_polls_between_whole_reads_list_only_what_changed_and_miss_nothing(rig):
    """After one whole read, a poll lists only the entries with requests since the last
    one and those without a live stream (#16), and sees what a whole read would: a
    quiet tunnel stays live, a request that came and went is live once, a new tunnel
    opens, a closed one ends with its final counters."""
    haproxy, adapter, _ = rig
    tunnel = open_tunnel(haproxy.port, AUTHID)
    first = adapter.poll()
    assert first[AUTHID].live and adapter.whole_reads == 1
    assert adapter.poll({AUTHID})[AUTHID] is first[AUTHID]       # quiet: the same
    assert request_status(haproxy.port, OTHER) == 200
    assert adapter.poll({AUTHID})[OTHER].live                     # came and went
    assert not adapter.poll({AUTHID, OTHER})[OTHER].live
    other = open_tunnel(haproxy.port, OTHER)
    assert adapter.poll({AUTHID})[OTHER].live                     # opened
    tunnel.sendall(b"ping")
    assert tunnel.recv(4) == b"ping"
    tunnel.close()
    ended = wait_for(lambda: (lambda seen: seen if not seen[AUTHID].live else None)(
        adapter.poll({AUTHID, OTHER})), timeout=5, what="the closed tunnel seen ended")
    assert ended[AUTHID].bytes_in > 0 and ended[OTHER].live
    assert adapter.whole_reads == 1
    # a whole read by a new adapter sees the same
    assert view(ProxyAdapter(adapter.admin).poll()) == view(ended)
    other.close()


def test_a_restarted_haproxy_is_read_whole(rig):
    """haproxy restarted between two polls: its table is new, the filtered listings do
    not add up to what the adapter knew, and the poll reads the whole table instead."""
    haproxy, adapter, _ = rig
    tunnel = open_tunnel(haproxy.port, AUTHID)
    adapter.poll()
    adapter.poll({AUTHID})
    haproxy.stop()
    tunnel.close()
    haproxy.start()
    other = open_tunnel(haproxy.port, OTHER)
    seen = adapter.poll({AUTHID})
    assert adapter.whole_reads == 2
    assert AUTHID not in seen and seen[OTHER].live
    other.close()
