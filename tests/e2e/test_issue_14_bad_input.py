"""Issue #14: bad input to the tools gets one line that says what and where, exit 2, and
nothing is created.

`lthnctl authid show` on a missing or damaged ledger printed a traceback and could create
an empty ledger; authd printed a traceback when its status port was taken; `lthn-node
run` exited 1 where `lthn-haproxy` exited 2 for the same certificate mistake.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lthn.ledger import Ledger
from lthn.node.supervision import tool

AUTHID = "1A00112233445566"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line_exit_2(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refusal (exit 2, no traceback anywhere)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def config_file(tmp_path: Path, node_config) -> Iterator[tuple[Path, dict]]:
    config = node_config()
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, config


# --- lthnctl authid show ---

def test_issue_14_authid_show_without_a_ledger_says_so_and_creates_nothing(config_file):
    path, config = config_file
    state = Path(config["state_dir"])
    line = one_line_exit_2(run("lthnctl", "-c", str(path), "authid", "show", AUTHID))
    assert line == f"Error: {state / 'ledger.sqlite'}: no ledger there (the node creates " \
        "it when it first starts; is this the node's config?)"
    assert not state.exists()


@pytest.mark.parametrize("content,reason", [
    (b"this is not a database, it is a note\n" * 200, "cannot read the ledger: file is not "
     "a database"),
    (b"", "not a ledger yet (schema version 0)"),
], ids=["damaged", "empty"])
def test_issue_14_authid_show_on_a_damaged_ledger_says_so_and_changes_nothing(
        config_file, content, reason):
    path, config = config_file
    state = Path(config["state_dir"])
    state.mkdir(mode=0o700)
    ledger = state / "ledger.sqlite"
    ledger.write_bytes(content)
    line = one_line_exit_2(run("lthnctl", "-c", str(path), "authid", "show", AUTHID))
    assert line == f"Error: {ledger}: {reason}"
    assert ledger.read_bytes() == content
    assert files_under(state) == ["ledger.sqlite"]


def test_issue_14_authid_show_still_reads_a_good_ledger(config_file):
    path, config = config_file
    ledger = Ledger.open(Path(config["state_dir"]) / "ledger.sqlite")
    try:
        with ledger.transaction() as tx:
            tx.ensure_authid(AUTHID, "1A")
            tx.credit(AUTHID, 1200)
    finally:
        ledger.close()
    result = run("lthnctl", "-c", str(path), "authid", "show", AUTHID)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"authid           {AUTHID}\n"), result.stdout


# --- authd's ports ---

@pytest.mark.parametrize("key,kind", [("status_port", socket.SOCK_STREAM),
                                      ("log_port", socket.SOCK_DGRAM)])
def test_issue_14_authd_with_a_port_taken_says_which_and_exits_2(config_file, key, kind):
    path, config = config_file
    port = config["proxy"][key]
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))   # another program's, without SO_REUSEPORT
        if kind == socket.SOCK_STREAM:
            holder.listen()
        line = one_line_exit_2(run("lthn-authd", "-c", str(path)))
    name = "tcp" if kind == socket.SOCK_STREAM else "udp"
    assert line == f"Error: {path}: proxy.{key}: {name} 127.0.0.1:{port} is already in use " \
        "by another program; stop it or choose another port"


# --- the same certificate mistake, the same answer ---

@pytest.mark.parametrize("case", ["missing", "no key"])
def test_issue_14_a_certificate_mistake_is_the_same_line_and_exit_2_everywhere(
        tmp_path, node_config, case):
    pem = tmp_path / "provider.pem"
    if case == "no key":
        pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        reason = f"proxy.certificate: {pem} must hold the certificate and its private key " \
            "in PEM"
    else:
        reason = f"proxy.certificate: {pem} does not exist"
    config = node_config({"proxy": {"certificate": str(pem)}})
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    state = Path(config["state_dir"])
    for argv in (("lthn-node", "run", "-c", str(path)), ("lthn-haproxy", "-c", str(path)),
                 ("lthn-haproxy", "-c", str(path), "-t")):
        line = one_line_exit_2(run(*argv))
        assert line == f"Error: {path}: {reason}", argv
        assert not state.exists(), f"{argv} created {state}"
