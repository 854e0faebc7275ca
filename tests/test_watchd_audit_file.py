"""The audit log file (issue #19): every audit row once and in order, across restarts,
torn lines and rotation; anonymised by default (a salted hash of the /24 or /48, authids
cut), in full with the switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lthn.config import parse
from lthn.ledger import Ledger
from lthn.sources import network_of
from services.watchd.audit_file import AuditFile, anonymise_address

AUTHID = "1A00112233445566"


def config_for(tmp_path: Path, **audit):
    return parse({"provider": {"id": "a" * 64}, "state_dir": str(tmp_path / "state"),
                  "audit": audit}, "test.yaml")


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite")
    yield led
    led.close()


def add_rows(ledger: Ledger, n: int, source: str = "203.0.113.7:40001") -> None:
    with ledger.transaction() as tx:
        for i in range(n):
            tx.audit("sessiond", "session opened", AUTHID, session_id=i, kind="proxy",
                     source=source)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# expect: (address text, the network that is hashed)
@pytest.mark.parametrize("text, network", [
    ("203.0.113.7", "203.0.113.0/24"),
    ("203.0.113.7:5123", "203.0.113.0/24"),
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("2001:db8:1:2::7", "2001:db8:1::/48"),
    ("[2001:db8:1:2::7]:443", "2001:db8:1::/48"),
])
def test_an_address_is_reduced_to_its_24_or_48(text, network):
    assert str(network_of(text)) == network


def test_anonymised_lines_hide_the_address_and_most_of_the_authid(tmp_path, ledger):
    audit = AuditFile(config_for(tmp_path), ledger)
    add_rows(ledger, 1, "203.0.113.7:40001")
    add_rows(ledger, 1, "203.0.113.99:40002")
    add_rows(ledger, 1, "198.51.100.7:40003")
    assert audit.follow() == 3
    text = audit.path.read_text()
    assert "203.0.113" not in text and "198.51.100" not in text and AUTHID not in text
    first, second, third = lines(audit.path)
    assert first["authid"] == "1A0011..."
    assert first["detail"]["source"] == second["detail"]["source"]   # same /24
    assert first["detail"]["source"] != third["detail"]["source"]
    assert first["detail"]["source"].startswith("net4-")
    assert (first["event"], first["actor"], first["id"]) == ("session opened", "sessiond", 1)
    assert first["time"].endswith("Z")
    # the hash is salted per node: another node's salt gives another hash
    assert anonymise_address("203.0.113.7", b"other salt") != first["detail"]["source"]
    assert oct((tmp_path / "state" / "audit.salt").stat().st_mode & 0o777) == "0o600"


def test_full_lines_with_the_switch(tmp_path, ledger):
    audit = AuditFile(config_for(tmp_path, anonymise=False), ledger)
    add_rows(ledger, 1)
    audit.follow()
    (line,) = lines(audit.path)
    assert line["authid"] == AUTHID and line["detail"]["source"] == "203.0.113.7:40001"


def test_a_restart_resumes_after_the_last_line_even_a_torn_one(tmp_path, ledger):
    config = config_for(tmp_path)
    audit = AuditFile(config, ledger)
    add_rows(ledger, 3)
    audit.follow()
    with open(audit.path, "a") as fh:
        fh.write('{"id": 4, "time": "tor')          # a crash in the middle of a line
    again = AuditFile(config, ledger)
    assert again.last_id == 3
    add_rows(ledger, 2)
    assert again.follow() == 2
    text = audit.path.read_text().splitlines()
    assert text[3] == '{"id": 4, "time": "tor'   # left as it was, on a line of its own
    ids = [json.loads(x)["id"] for i, x in enumerate(text) if i != 3]
    assert ids == [1, 2, 3, 4, 5]


def test_rotation_by_size_keeps_the_backups_and_loses_no_line(tmp_path, ledger):
    config = config_for(tmp_path, max_bytes=2000, backups=2)
    audit = AuditFile(config, ledger)
    for _ in range(12):
        add_rows(ledger, 2)
        audit.follow()
    rotated = [audit.path.with_name(f"audit.log.{n}") for n in (1, 2)]
    assert all(p.exists() for p in rotated)
    assert not audit.path.with_name("audit.log.3").exists()
    assert all(p.stat().st_size <= 2000 for p in [audit.path, *rotated])
    kept = [x["id"] for p in reversed(rotated) for x in lines(p)] + \
        [x["id"] for x in lines(audit.path)]
    assert kept == list(range(kept[0], 25))   # contiguous up to the newest
    # a restart right after a rotation resumes from the rotated file
    audit.path.unlink()
    assert AuditFile(config, ledger).last_id == lines(rotated[0])[-1]["id"]
