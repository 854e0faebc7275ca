"""authd's map sync against a real haproxy 2.6 and a real ledger (no mocks)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from lthn import access
from lthn.config import parse
from lthn.haproxy.contract import authid_map_path
from lthn.haproxy.firewall_files import write_run_files
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from lthn.tls import ensure_certificates
from services.authd.map_sync import MapSync, parse_show_map
from services.proxy import destinations, haproxy_config
from tests.fixtures.common import free_port, wait_for

ACTIVE = ["1A00000000000001", "1A00000000000002"]


class Haproxy:
    """haproxy on the rendered config, started and killed by the test."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.admin = HaproxyAdmin(cfg.haproxy_admin_socket, timeout=2)
        self.map = authid_map_path(cfg)

    def start(self, map_text: str = "") -> Haproxy:
        self.map.write_text(map_text)
        write_run_files(self.cfg, {}, {})   # the firewall's files the config loads (#17)
        path = self.cfg.state / "run" / "haproxy.cfg"
        own = destinations.own_addresses_path(self.cfg, "haproxy")
        own.write_text(destinations.own_address_lines(["127.0.0.1"]))
        path.write_text(haproxy_config.render(self.cfg))
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: "Pid:" in self.admin.command("show info"), timeout=10,
                 what="haproxy admin socket")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.cfg.haproxy_admin_socket.unlink(missing_ok=True)

    def keys(self) -> dict[str, int]:
        return dict(parse_show_map(self.admin.command(f"show map {self.map}")))


@pytest.fixture
def cfg(tmp_path: Path):
    cfg = parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path),
                 "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"}],
                 "proxy": {"bind": "127.0.0.1", "port": free_port(), "log_port": free_port()}},
                "test.yaml")
    (tmp_path / "run").mkdir()
    ensure_certificates(tmp_path / "tls")
    return cfg


@pytest.fixture
def ledger(cfg):
    led = Ledger.open(cfg.ledger_path)
    for authid in ACTIVE:
        activate(led, cfg, authid)
    yield led
    led.close()


def activate(ledger: Ledger, cfg, *authids: str) -> None:
    """Credit and activate every authid, in one transaction."""
    rules = access.rules_for(cfg, cfg.services[0])
    with ledger.transaction() as tx:
        for authid in authids:
            tx.ensure_authid(authid, authid[:2])
            access.reevaluate(tx, tx.credit(authid, 100 * 10**12), rules, "t")


def deactivate(ledger: Ledger, authid: str) -> None:
    with ledger.transaction() as tx:
        access.deactivate(tx, tx.authid(authid), "test", "t")


@pytest.fixture
def haproxy(cfg):
    h = Haproxy(cfg)
    yield h
    h.stop()


def test_resync_adds_missing_and_removes_extra_and_duplicates(cfg, ledger, haproxy):
    haproxy.start("1A00000000000001 1A\n1A000000000000EE 1A\n1A000000000000EE 1A\n")
    sync = MapSync(haproxy.admin, haproxy.map, ledger, cfg.state / "run" / "lock")
    assert sync.resync("test") == (1, 1)
    assert haproxy.keys() == {a: 1 for a in ACTIVE}
    assert sync.resync("again") == (0, 0)


def test_apply_follows_the_ledger_not_the_message(cfg, ledger, haproxy):
    haproxy.start()
    sync = MapSync(haproxy.admin, haproxy.map, ledger, cfg.state / "run" / "lock")
    assert sync.apply(ACTIVE[0]) and sync.apply(ACTIVE[0])        # a replay adds nothing
    assert haproxy.keys() == {ACTIVE[0]: 1}
    deactivate(ledger, ACTIVE[0])
    assert sync.apply(ACTIVE[0])
    assert haproxy.keys() == {}
    assert sync.apply("1A000000000000FF")                          # unknown: stays absent
    assert not sync.apply("1A00 show info")                        # malformed: ignored
    assert haproxy.keys() == {}


def test_unreachable_haproxy_is_logged_once_and_resynced_when_back(cfg, ledger, haproxy,
                                                                   caplog):
    sync = MapSync(haproxy.admin, haproxy.map, ledger, cfg.state / "run" / "lock")
    with caplog.at_level(logging.INFO, logger="services.authd.map_sync"):
        for _ in range(3):
            assert sync.resync("down") is None
            assert sync.check_process() is False
            assert sync.apply(ACTIVE[0]) is False
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1
        # never answered yet (the node is starting): not a warning (issue #15)
        assert unreachable[0].levelno == logging.INFO
        haproxy.start()          # an empty map: as if the file had been stale
        assert sync.check_process() is True
        assert haproxy.keys() == {a: 1 for a in ACTIVE}
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        haproxy.stop()           # gone after it answered: that is worth a warning
        assert sync.resync("down again") is None
        again = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(again) == 2 and again[1].levelno == logging.WARNING


def test_a_new_haproxy_process_is_noticed_and_resynced(cfg, ledger, haproxy):
    haproxy.start()
    sync = MapSync(haproxy.admin, haproxy.map, ledger, cfg.state / "run" / "lock")
    assert sync.check_process() is True and sync.check_process() is False
    haproxy.stop()
    haproxy.start("1A000000000000EE 1A\n")   # a new process with a wrong list
    assert sync.check_process() is True
    assert haproxy.keys() == {a: 1 for a in ACTIVE}


def test_resync_of_thousands_fits_haproxys_payload_limit(cfg, ledger, haproxy):
    """One `add map` payload over 16 kB is silently dropped by haproxy: batches must not be."""
    many = [f"1A{i:014X}" for i in range(1, 2001)]
    activate(ledger, cfg, *many)
    haproxy.start()
    sync = MapSync(haproxy.admin, haproxy.map, ledger, cfg.state / "run" / "lock")
    assert sync.resync("test") == (len(set(many) | set(ACTIVE)), 0)
    assert len(haproxy.keys()) == len(set(many) | set(ACTIVE))


def test_two_authd_processes_add_each_authid_once(cfg, ledger, haproxy):
    """numprocs=2: both see every activation at the same moment; the lock keeps one entry."""
    import threading
    many = [f"1B{i:014X}" for i in range(40)]
    activate(ledger, cfg, *many)
    haproxy.start()
    go = threading.Barrier(2)
    failures: list[BaseException] = []

    def authd_process() -> None:
        own = Ledger.open(cfg.ledger_path)   # one ledger connection per process, as authd
        sync = MapSync(HaproxyAdmin(cfg.haproxy_admin_socket), haproxy.map, own,
                       cfg.state / "run" / "authd-map.lock")
        try:
            go.wait(timeout=10)
            for authid in many:
                assert sync.apply(authid)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            sync.close()
            own.close()

    threads = [threading.Thread(target=authd_process) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    assert haproxy.keys() == {a: 1 for a in many}


def test_catch_up_applies_what_changed_since_the_last_look_and_only_that(cfg, ledger,
                                                                         haproxy):
    """#16: the periodic look reads the ledger's changes, not every authid: a
    deactivation no message announced is applied, one a message applied is not again,
    and a ledger whose counter went back (a restored file) gets a full resync."""
    many = [f"1C{i:014X}" for i in range(300)]
    activate(ledger, cfg, *many)
    haproxy.start()
    sync = MapSync(haproxy.admin, haproxy.map, ledger, cfg.state / "run" / "lock")
    assert sync.catch_up() == len(many) + len(ACTIVE)      # the first look is a resync
    assert sync.catch_up() == 0                            # nothing changed, nothing read
    deactivate(ledger, many[5])                            # its message was lost
    deactivate(ledger, many[6])
    assert sync.apply(many[6])                             # this one's message arrived
    assert sync.catch_up() == 1
    assert many[5] not in haproxy.keys() and many[6] not in haproxy.keys()
    with ledger.transaction() as tx:                       # a top-up: still admitted
        tx.credit(many[7], 100 * 10**12)
    assert sync.catch_up() == 1 and many[7] in haproxy.keys()   # one `set map`
    assert sync.catch_up() == 0
    ledger.conn.execute("UPDATE authids SET change_seq = 1")   # as if restored from a copy
    haproxy.admin.command(f"del map {haproxy.map} {many[8]}")
    assert sync.catch_up() == 1 and many[8] in haproxy.keys()
    assert len(haproxy.keys()) == len(many) + len(ACTIVE) - 2
