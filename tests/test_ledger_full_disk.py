"""A ledger on a full disk (#14): a refused write is `LedgerNotWritable("disk full")`,
nothing of it is kept, the daemon keeps the reason as its state and logs each change
once; with room again the same write succeeds. The disk is a small tmpfs that fills up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
import zmq

from lthn import config as config_mod
from lthn.daemon import Daemon
from lthn.ledger import Ledger, LedgerNotWritable

AUTHID = "1A00112233445566"


def credit(ledger: Ledger, amount: int) -> None:
    with ledger.transaction() as tx:
        tx.ensure_authid(AUTHID, "1A")
        tx.credit(AUTHID, amount)


def test_a_write_on_a_full_disk_is_refused_whole_and_succeeds_later(small_disk):
    disk = small_disk("4m")
    ledger = Ledger.open(disk.path / "ledger.sqlite")
    try:
        disk.fill()
        with pytest.raises(LedgerNotWritable) as refused:
            credit(ledger, 1200)
        assert refused.value.reason == "disk full"
        assert str(refused.value) == f"ledger {disk.path / 'ledger.sqlite'}: not writable: " \
            "disk full"
        assert ledger.write_problem == "disk full"
        assert ledger.authid(AUTHID) is None          # nothing of the transaction kept
        disk.free()
        credit(ledger, 1200)
        assert ledger.write_problem is None
        row = ledger.authid(AUTHID)
        assert row is not None and row.credit == 1200
    finally:
        ledger.close()


def test_a_daemon_keeps_a_full_disk_as_its_state_and_logs_each_change_once(
        small_disk, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = small_disk("4m")
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"provider": {"id": "ab" * 32},
                                    "state_dir": str(disk.path / "state")}))
    config = config_mod.load(path)
    ledger = Ledger.open(config.ledger_path)
    ctx = zmq.Context()
    daemon = Daemon(config, ctx, ledger)   # no busd: its publisher goes on without one
    try:
        def charge() -> None:
            credit(ledger, 1)

        caplog.set_level(logging.INFO, logger="lthn.daemon")
        disk.fill()
        for _ in range(3):                   # three turns of the loop
            daemon.timers.after(0, charge)
            daemon.timers.run_due()
            daemon.flush_outbox()
            daemon.check_ledger()
        assert daemon.ledger_problem == "disk full"
        # what `lthnctl status` gets from the daemon (its request and asker are unused)
        info = daemon.control.on_status(None, None)  # type: ignore[arg-type]
        assert info.details["ledger"] == "not writable: disk full"
        lines = [r.getMessage() for r in caplog.records]
        assert lines.count(f"ledger {config.ledger_path}: not writable: disk full; work "
                           "that needs it waits and is retried") == 1
        assert not any("timer" in line and "failed" in line for line in lines)
        disk.free()
        daemon.timers.after(0, charge)
        daemon.timers.run_due()
        daemon.check_ledger()
        assert daemon.ledger_problem is None
        assert "ledger" not in daemon.control.on_status(None, None).details  # type: ignore
        assert f"ledger {config.ledger_path}: writable again" in \
            [r.getMessage() for r in caplog.records]
        row = ledger.authid(AUTHID)
        assert row is not None and row.credit == 1   # only the write that had room
    finally:
        daemon._close()
        ctx.destroy(linger=0)
