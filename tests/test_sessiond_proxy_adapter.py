"""sessiond's proxy adapter and book against a real haproxy 2.6 with the node's contract
(tests/fixtures/mini_proxy.py): what a poll reports, and what a tick writes (#16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lthn.config import parse
from lthn.haproxy import contract
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from lthn.ports import free_port
from services.sessiond.proxy_sessions import ProxyAdapter
from services.sessiond.session_book import SessionBook
from tests.fixtures.common import wait_for
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
