"""Config mistakes: one `Error: <file>: <key path>: <reason>` line and exit code 2, from
`lthnctl config check`, from a daemon, and from `lthn-node run` (issue #2); never a
traceback. Also: the sdp.json import and the commented sample config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lthn import config as config_mod
from lthn.config_sample import sample
from lthn.node.programs import PROGRAMS
from lthn.node.supervision import tool

PROVIDER = "ab" * 32
SERVICE = {"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001"}

# (name, file body, expected reason after "Error: <file>: "); the body is YAML text
CASES = [
    ("unknown_key",
     f'provider: {{id: "{PROVIDER}"}}\nproxy: {{prot: 8180}}\n',
     'proxy.prot: unknown key (did you mean "port"?)'),
    ("wrong_type",
     f'provider: {{id: "{PROVIDER}"}}\nproxy: {{port: eighty}}\n',
     'proxy.port: must be an integer (got "eighty")'),
    ("wrong_type_in_list",
     f'provider: {{id: "{PROVIDER}"}}\nservices:\n'
     '- {id: "1A", name: P, type: proxy, cost: free}\n',
     'services[0].cost: must be a decimal number (got "free")'),
    ("missing_value",
     f'provider: {{id: "{PROVIDER}"}}\nservices:\n- {{id: "1A", type: proxy, cost: 1}}\n',
     "services[0].name: missing value: service name"),
    ("missing_provider",
     "services: []\n",
     "provider: missing value: who runs this node"),
    ("bad_service_id",
     f'provider: {{id: "{PROVIDER}"}}\nservices:\n'
     '- {id: "1G", name: P, type: proxy, cost: 1}\n',
     'services[0].id: must be two hex characters, like "1A" (got "1G")'),
    ("duplicate_service_id",
     f'provider: {{id: "{PROVIDER}"}}\nservices:\n'
     '- {id: "0a", name: A, type: proxy, cost: 1}\n'
     '- {id: "1B", name: B, type: proxy, cost: 1}\n'
     '- {id: "0A", name: C, type: proxy, cost: 1}\n',
     'services[2].id: "0A" is already used by services[0]'),
    ("bad_yaml",
     f'provider: {{id: "{PROVIDER}"\nstate_dir: [\n',
     "not valid YAML: line 2, column 1: expected ',' or '}', but got '<scalar>'"),
    ("not_a_mapping",
     "- provider\n- services\n",
     "must be a mapping (got a list)"),
    ("empty_file",
     "",
     "the file is empty; `provider.id` at least is required"),
]


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=30, check=False)


def assert_config_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    first = result.stderr.splitlines()[0] if result.stderr else ""
    assert first == expected


# the three ways a config is read: the check, a daemon, and the node runner
READERS = [
    ("lthnctl", lambda path: ("lthnctl", "-c", str(path), "config", "check")),
    ("lthn-firewalld", lambda path: ("lthn-firewalld", "-c", str(path))),
    ("lthn-node run", lambda path: ("lthn-node", "run", "-c", str(path))),
]


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
@pytest.mark.parametrize("name,body,reason", CASES, ids=[c[0] for c in CASES])
def test_config_error_is_one_line_and_exit_2(tmp_path, reader, name, body, reason):
    path = write(tmp_path, name, body)
    assert_config_error(run(*reader[1](path)), f"Error: {path}: {reason}")


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
def test_unreadable_config_file(tmp_path, reader):
    """A missing file and a directory in its place (root reads any mode-000 file)."""
    missing = tmp_path / "nope.yaml"
    assert_config_error(run(*reader[1](missing)),
                        f"Error: {missing}: cannot read: No such file or directory")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert_config_error(run(*reader[1](directory)),
                        f"Error: {directory}: cannot read: Is a directory")


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
def test_non_utf8_config_file(tmp_path, reader):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"provider:\n  id: \xff\xfe\n")
    assert_config_error(run(*reader[1](path)), f"Error: {path}: not UTF-8 text (byte 16)")


DAEMONS = [p.script for p in PROGRAMS]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_every_landed_program_refuses_a_bad_config(tmp_path, daemon):
    path = write(tmp_path, "dup", CASES[6][1])
    assert_config_error(run(daemon, "-c", str(path)), f"Error: {path}: {CASES[6][2]}")


def test_daemon_error_points_at_the_check_command(tmp_path):
    path = write(tmp_path, "bad", CASES[0][1])
    result = run("lthn-firewalld", "-c", str(path))
    assert "lthnctl -c FILE config check" in result.stderr


def test_node_run_with_bad_config_starts_nothing(tmp_path):
    state = tmp_path / "state"
    path = write(tmp_path, "bad", CASES[1][1] + f"state_dir: {state}\n")
    assert run("lthn-node", "run", "-c", str(path)).returncode == 2
    assert not state.exists()


def test_good_config_checks_ok(tmp_path):
    path = write(tmp_path, "good", yaml.safe_dump(
        {"provider": {"id": PROVIDER}, "services": [SERVICE], "state_dir": str(tmp_path)}))
    result = run("lthnctl", "-c", str(path), "config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK; services: 1A (proxy, 0.001/min)"


def lethean_sdp(services: list[dict]) -> dict:
    """An sdp.json as Lethean's dispatcher tooling writes it (fields we do not use included)."""
    return {
        "protocolVersion": 1,
        "provider": {"id": PROVIDER, "name": "Someone", "terms": "none",
                     "certificates": {"0": {"id": 0, "content": "LS0t..."}}},
        "services": services,
    }


def test_sdp_import(tmp_path):
    sdp = tmp_path / "sdp.json"
    sdp.write_text(json.dumps(lethean_sdp([
        {"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001", "allowRefunds": False,
         "downloadSpeed": 10485760, "uploadSpeed": 1048576, "firstPrePaidMinutes": 20,
         "firstVerificationsNeeded": 0, "subsequentPrePaidMinutes": 30,
         "subsequentVerificationsNeeded": 1, "disable": False,
         "proxy": [{"endpoint": "192.0.2.10", "port": "8180/tcp"}], "vpn": [],
         "certificates": {"cn": "x"}},
        {"id": "2B", "name": "Fast proxy", "type": "proxy", "cost": "0.0025",
         "firstPrePaidMinutes": 5, "firstVerificationsNeeded": 1,
         "subsequentPrePaidMinutes": 5, "subsequentVerificationsNeeded": 2},
    ])))
    path = write(tmp_path, "node", yaml.safe_dump(
        {"provider": {"id": PROVIDER}, "sdp": str(sdp), "state_dir": str(tmp_path)}))
    config = config_mod.load(path)
    first, second = config.services
    assert (first.key, first.name, str(first.cost), first.firstPrePaidMinutes,
            first.subsequentVerificationsNeeded, first.downloadSpeed) == \
        ("1A", "Proxy", "0.001", 20, 1, 10485760)
    assert (second.key, str(second.cost), second.firstVerificationsNeeded) == ("2B", "0.0025", 1)
    assert config.atomic(second.cost) == 250_000   # lethean: 10^8 atomic units per coin
    result = run("lthnctl", "-c", str(path), "config", "check")
    assert result.stdout.strip() == \
        f"{path}: OK; services: 1A (proxy, 0.001/min), 2B (proxy, 0.0025/min)"


def test_sdp_service_clashing_with_config_service(tmp_path):
    sdp = tmp_path / "sdp.json"
    sdp.write_text(json.dumps(lethean_sdp([dict(SERVICE, id="1a")])))
    path = write(tmp_path, "node", yaml.safe_dump(
        {"provider": {"id": PROVIDER}, "services": [SERVICE], "sdp": str(sdp),
         "state_dir": str(tmp_path)}))
    assert_config_error(run("lthnctl", "-c", str(path), "config", "check"),
                        f'Error: {path}: services[1].id: "1a" is already used by services[0]')


def test_sdp_mistakes_name_the_sdp_key(tmp_path):
    bad = tmp_path / "sdp.json"
    bad.write_text("{not json")
    path = write(tmp_path, "node", yaml.safe_dump(
        {"provider": {"id": PROVIDER}, "sdp": str(bad), "state_dir": str(tmp_path)}))
    result = run("lthnctl", "-c", str(path), "config", "check")
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {path}: sdp: {bad} is not JSON: ")
    bad.write_text(json.dumps(lethean_sdp([{"id": "1A", "name": "P", "type": "proxy"}])))
    assert_config_error(run("lthnctl", "-c", str(path), "config", "check"),
                        f"Error: {path}: services[0].cost: missing value: price in coins per "
                        "minute")


def test_sample_config_is_valid_and_complete(tmp_path):
    """The commented sample parses as it is and names every setting of the schema."""
    text = sample()
    data = yaml.safe_load(text)
    data["state_dir"] = str(tmp_path)
    config = config_mod.parse(data, "sample.yaml")
    assert config.services[0].key == "1A"
    for key in ("wallet", "proxy", "bus", "sessions", "firewall", "allow_destinations",
                "refusal_threshold", "max_wait_to_spend"):
        assert f"{key}:" in text
