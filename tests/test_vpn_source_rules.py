"""lthn-vpnd's source rules (services/vpn/source_rules.py) watching the operator's list
files (lthn/list_files.py, shared with firewalld): a changed file is re-read, a malformed
line is skipped and logged with file and line number once, an unreadable file keeps the
last good list and says so once (issue #17)."""

from __future__ import annotations

import logging
import os

import pytest

from lthn import config as config_mod
from lthn.refusals import Refusal
from services.vpn.source_rules import SourceRules


@pytest.fixture
def rules(tmp_path) -> SourceRules:
    config = config_mod.parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path)},
                              str(tmp_path / "node.yaml"))   # lists beside the config
    rules = SourceRules(config)
    rules.poll_lists()
    return rules


def write(path, text: str | bytes) -> None:
    """Replace the file as an editor does, and make sure the change is seen (a new inode)."""
    new = path.with_suffix(".new")
    new.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.replace(new, path)


def refused(rules: SourceRules, source: str) -> Refusal | None:
    verdict = rules.refusal(source, 0.0)
    return verdict and verdict[0]


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_absent_lists_admit_everyone_and_a_saved_file_applies_at_the_next_poll(rules, tmp_path):
    assert refused(rules, "203.0.113.7") is None
    assert not rules.poll_lists()                       # nothing changed: nothing re-read
    write(tmp_path / "src_deny.ips", "203.0.113.7\n")
    assert rules.poll_lists()
    assert refused(rules, "203.0.113.7") is Refusal.DENY_SRC_IP
    (tmp_path / "src_deny.ips").unlink()                # removed: an empty list again
    assert rules.poll_lists()
    assert refused(rules, "203.0.113.7") is None


def test_a_malformed_line_is_skipped_and_logged_once_with_file_and_line(rules, tmp_path,
                                                                        caplog):
    path = tmp_path / "src_deny.ips"
    caplog.set_level(logging.INFO)
    write(path, "203.0.113.7\n10.0.0.300\n198.51.100.0/24\n")
    assert rules.poll_lists()
    for _ in range(3):
        rules.poll_lists()                              # unchanged: said once
    said = [m for m in messages(caplog) if "line skipped" in m]
    assert said == [f'{path}:2: "10.0.0.300" is not an IP address or CIDR range; '
                    "line skipped"]
    assert refused(rules, "203.0.113.7") is Refusal.DENY_SRC_IP
    assert refused(rules, "198.51.100.9") is Refusal.DENY_SRC_IP
    assert f"{path}: 2 entries (was 0), applied" in messages(caplog)


def test_an_unreadable_file_keeps_the_last_good_list_and_says_so_once(rules, tmp_path,
                                                                      caplog):
    path = tmp_path / "src_allow.ips"
    write(path, "10.99.0.0/24\n")
    rules.poll_lists()
    assert refused(rules, "10.98.0.1") is Refusal.DENY_SRC_IP
    caplog.set_level(logging.INFO)
    write(path, b"10.99.0.0/24\n\xff\xfe\n")
    for _ in range(3):
        assert not rules.poll_lists()
    assert [m for m in messages(caplog) if "keeping" in m] == [
        f"{path}: not UTF-8 text (byte 13); keeping its last good list (1 entries)"]
    assert refused(rules, "10.98.0.1") is Refusal.DENY_SRC_IP   # the last good list
    assert refused(rules, "10.99.0.1") is None
    write(path, "")                                     # readable again, and empty
    assert rules.poll_lists()
    assert f"{path}: readable again" in messages(caplog)
    assert refused(rules, "10.98.0.1") is None
