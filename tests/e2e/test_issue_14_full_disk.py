"""Issue #14: a full disk.

With the demo's directory on a full disk, supervisord crashed (its output went to
node.out on that disk) and left every program orphaned. With only the state dir full,
paymentd said "wallet down (internal error: OperationalError)" although the wallet was
fine. Here the disk is a small tmpfs (tests/fixtures/faults.py) that fills up.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from lthn.config import load as load_config
from lthn.ledger import Ledger
from lthn.node.supervision import tool
from tests.fixtures.common import wait_for
from tests.fixtures.node import Node, default_config, merge
from tests.fixtures.regtest import new_authid

AMOUNT = 10 * 10**9 + 10**8   # what service 1A's first payment must buy (10 minutes)


def test_issue_14_supervisord_survives_a_full_disk(small_disk):
    """The node's directory (state dir and node.out) on a disk that fills up: supervisord
    keeps running and answering while its and its programs' log writes fail, a program
    restarted then waits for room to open the ledger (RUNNING, not FATAL), and once
    there is room it is ready and everything logs again."""
    disk = small_disk("16m")
    directory = disk.path / "node"
    node = Node(directory, default_config(directory / "state"), ("busd", "firewalld"))
    try:
        node.start()
        logs = node.state / "log"
        disk.fill(node.output_path, *logs.glob("*.log"))
        for _ in range(2):   # each restart makes supervisord and firewalld write lines
            result = node.ctl("restart", "firewalld")
            assert node.proc is not None and node.proc.poll() is None, \
                f"supervisord died on the full disk:\n{result.stdout}{result.stderr}\n" \
                + node.output()[-3000:]
            assert result.stdout.splitlines()[-1] == "firewalld: started", result.stdout
        states = node.status()
        assert states["busd"] == states["firewalld"] == "RUNNING", states
        before = (logs / "supervisord.log").stat().st_size
        ready = node.log_text("firewalld").count("firewalld: ready")
        disk.free()
        wait_for(lambda: node.log_text("firewalld").count("firewalld: ready") > ready,
                 timeout=15, what="the waiting firewalld ready once there is room")
        assert node.ctl("restart", "firewalld").returncode == 0
        node.wait_running()
        wait_for(lambda: (logs / "supervisord.log").stat().st_size > before, timeout=10,
                 what="supervisord logging again")
        assert node.proc.poll() is None
    finally:
        node.stop()


def test_issue_14_a_full_ledger_disk_is_reported_as_such_and_loses_no_payment(
        regtest, small_disk, tmp_path):
    """busd and paymentd with the state dir on a disk that fills up (their logs on
    another): a payment that arrives then is not credited, paymentd says `ledger ...: not
    writable: disk full`, not that the wallet is down; with room again it is credited,
    once."""
    disk = small_disk("16m")
    config_path = tmp_path / "node.yaml"
    config = merge(default_config(disk.path / "state"), {
        "wallet": dict(regtest.wallet_section(poll_interval=0.2),
                       start_height=regtest.height())})
    config_path.write_text(yaml.safe_dump(config))
    ledger_path = load_config(config_path).ledger_path
    log = tmp_path / "paymentd.log"
    procs: list[subprocess.Popen] = []
    try:
        for name, out in (("lthn-busd", tmp_path / "busd.log"), ("lthn-paymentd", log)):
            with open(out, "wb") as fh:
                procs.append(subprocess.Popen([tool(name), "-c", str(config_path)],
                                              stdout=fh, stderr=subprocess.STDOUT))
        wait_for(lambda: ": up at height" in log.read_text(), timeout=30,
                 what="paymentd seeing the wallet up")
        disk.fill()
        authid = new_authid("1A")
        txid = regtest.pay(authid, AMOUNT)
        wait_for(lambda: f"ledger {ledger_path}: not writable: disk full" in log.read_text(),
                 timeout=20, what="paymentd reporting the full disk")
        text = log.read_text()
        assert ": down (" not in text and "OperationalError" not in text, text[-3000:]
        assert payments(ledger_path, authid) == []
        disk.free()
        wait_for(lambda: payments(ledger_path, authid), timeout=20,
                 what="the payment credited once there is room")
        wait_for(lambda: f"ledger {ledger_path}: writable again" in log.read_text(),
                 timeout=10, what="paymentd saying the ledger is writable again")
        assert payments(ledger_path, authid) == [(txid, AMOUNT)]
        assert log.read_text().count(f"credited {AMOUNT} (txid {txid[:8]}") == 1
        assert all(p.poll() is None for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def payments(ledger_path: Path, authid: str) -> list[tuple[str, int]]:
    ledger = Ledger.open_existing(ledger_path)
    try:
        return [(p.txid, p.amount) for p in ledger.payments_of(authid)]
    finally:
        ledger.close()
