"""firewalld against a real haproxy that lacks the node's firewall ACLs and map (one not
started by lthn-haproxy, or an older config): haproxy answers "Unknown ACL identifier" to
every change. firewalld must say so once and keep running, not exit (it did: supervisord
gave up on it after five starts, seen in bench_scale.py's rig)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import zmq

from lthn.config import parse
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ledger import Ledger
from services.firewalld.main import Firewalld
from tests.fixtures.common import free_port, wait_for

FOREIGN_CONFIG = """\
global
    stats socket {admin} mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend plain
    bind 127.0.0.1:{port}
    http-request return status 200
"""


@pytest.fixture
def foreign_haproxy(tmp_path: Path):
    cfg = parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path / "state"),
                 "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"}],
                 "proxy": {"bind": "127.0.0.1", "port": free_port(),
                           "log_port": free_port()},
                 "firewall": {"nftables": "off"}},
                str(tmp_path / "node.yaml"))
    (cfg.state / "run").mkdir(parents=True)
    path = tmp_path / "foreign.cfg"
    path.write_text(FOREIGN_CONFIG.format(admin=cfg.haproxy_admin_socket, port=free_port()))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    admin = HaproxyAdmin(cfg.haproxy_admin_socket, timeout=2)
    try:
        wait_for(lambda: "Pid:" in admin.command("show info"), timeout=10,
                 what="haproxy's admin socket")
        yield cfg
    finally:
        proc.kill()
        proc.wait()


def test_firewalld_keeps_running_beside_a_haproxy_without_its_acls(foreign_haproxy, tmp_path,
                                                                   caplog):
    cfg = foreign_haproxy
    ledger = Ledger.open(cfg.ledger_path)
    ctx = zmq.Context()
    daemon = Firewalld(cfg, ctx, ledger)
    try:
        with caplog.at_level(logging.INFO):
            daemon.start()          # raised RuntimeAnswerError before the fix
            daemon.each_second()
            daemon.poll()
            # an operator's list saved meanwhile: swapped at the next poll, refused again
            cfg.list_path("src_deny").write_text("203.0.113.9\n")
            daemon.poll()
            daemon.each_second()
        failures = [r for r in caplog.records if "firewall rules not applied" in r.message]
        assert len(failures) == 1, caplog.text          # said once, not every second
        assert failures[0].levelno == logging.ERROR
        assert "Unknown ACL identifier" in failures[0].message
        assert daemon.haproxy.dirty                      # and retried
    finally:
        daemon.stop()
        ledger.close()
        ctx.destroy(linger=0)
