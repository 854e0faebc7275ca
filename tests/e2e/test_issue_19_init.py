"""Issue 19: `lthn-node init DIR` makes a node from nothing (keys, certificates, commented
config, signed sdp.json), refuses to overwrite without --force, and what it made runs;
`lthnctl sdp verify` accepts it and refuses a tampered one."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization

from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_NOT_ANSWERING, EXIT_OK
from lthn.node.supervision import tool
from tests.fixtures.common import free_port, wait_for
from tests.fixtures.node import Node, default_config
from tests.fixtures.proxy import ProxyClient

SECRET = ("provider.key", "node.yaml", "state/tls/ca.key", "state/tls/provider.key",
          "state/tls/provider.pem")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=60, check=False)


def init(directory: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("lthn-node", "init", str(directory), "--endpoint", "node.example.invalid",
               "--wallet-address", "iz" + "4" * 95, *extra)


def test_init_makes_a_node_whose_descriptor_verifies(tmp_path):
    directory = tmp_path / "node"
    made = init(directory, "--port", "8443", "--name", "Test provider")
    assert made.returncode == EXIT_OK, made.stderr
    for name in SECRET:
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # the provider id is the ed25519 public key of provider.key, in hex
    key = serialization.load_pem_private_key((directory / "provider.key").read_bytes(), None)
    pid = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw).hex()
    text = (directory / "node.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["provider"]["id"] == pid and len(pid) == 64
    assert config["provider"]["key"] == str(directory / "provider.key")
    assert config["state_dir"] == str(directory / "state")
    assert "# provider id: 64 hex characters" in text          # commented, every setting
    assert pid in made.stdout
    # a valid config, and a descriptor in Lethean's format naming this provider
    check = run("lthnctl", "-c", str(directory / "node.yaml"), "config", "check")
    assert check.returncode == EXIT_OK, check.stderr
    descriptor = json.loads((directory / "sdp.json").read_text())
    assert descriptor["provider"]["id"] == pid
    assert descriptor["provider"]["name"] == "Test provider"
    assert descriptor["provider"]["wallet"] == "iz" + "4" * 95
    ca = (directory / "state" / "tls" / "ca.pem").read_text()
    assert descriptor["provider"]["certificates"][0]["content"] == ca.replace("\n", "")
    assert descriptor["services"][0]["proxy"] == [{"endpoint": "node.example.invalid",
                                                   "port": "8443/TCP"}]
    ran = run("lthnctl", "sdp", "verify", str(directory / "sdp.json"))
    assert ran.returncode == EXIT_OK, ran.stderr
    assert f"valid, signed by provider {pid}" in ran.stdout
    ran = run("lthnctl", "sdp", "verify", str(directory / "sdp.json"), "--provider-id",
              "ab" * 32)
    assert ran.returncode == EXIT_FAILED and f"signed by provider {pid}, not" in ran.stderr


def test_a_tampered_descriptor_fails(tmp_path):
    directory = tmp_path / "node"
    assert init(directory).returncode == EXIT_OK
    sdp_json = directory / "sdp.json"
    original = sdp_json.read_bytes()
    sdp_json.write_bytes(original.replace(b'"cost": 0.001', b'"cost": 0.0001'))
    ran = run("lthnctl", "sdp", "verify", str(sdp_json))
    assert ran.returncode == EXIT_FAILED
    assert ran.stderr.strip() == (f"Error: {sdp_json}: sdp.json differs from the descriptor "
                                  "that was signed")
    sdp_json.write_bytes(original)
    jws = directory / "sdp.jws"
    header, payload, signature = jws.read_text().strip().split(".")
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    jws.write_text(f"{header}.{payload}.{flipped}\n")
    ran = run("lthnctl", "sdp", "verify", str(jws), "--json")
    assert ran.returncode == EXIT_FAILED
    assert json.loads(ran.stdout)["valid"] is False
    assert "bad signature" in json.loads(ran.stdout)["error"]
    ran = run("lthnctl", "sdp", "verify", str(tmp_path / "missing.json"))
    assert ran.returncode == EXIT_CONFIG and "cannot read" in ran.stderr


def test_init_twice_refuses_without_force(tmp_path):
    directory = tmp_path / "node"
    assert init(directory).returncode == EXIT_OK
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    again = init(directory)
    assert again.returncode == EXIT_CONFIG
    assert again.stderr.startswith(f"Error: {directory}: already holds provider.key")
    assert "--force" in again.stderr
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    forced = init(directory, "--force")
    assert forced.returncode == EXIT_OK, forced.stderr
    assert (directory / "provider.key").read_bytes() != before[directory / "provider.key"]
    assert run("lthnctl", "sdp", "verify", str(directory / "sdp.json")).returncode == EXIT_OK


def test_commands_on_a_node_that_is_not_running_say_so(tmp_path):
    directory = tmp_path / "node"
    assert init(directory).returncode == EXIT_OK
    config = str(directory / "node.yaml")
    ran = run("lthnctl", "-c", config, "status")
    assert ran.returncode == EXIT_NOT_ANSWERING
    assert ran.stderr.strip() == ("Error: supervisord is not running (no socket at "
                                  f"{directory / 'state' / 'run' / 'supervisor.sock'}; "
                                  "start the node with `lthn-node run`)")
    ran = run("lthnctl", "-c", config, "authid", "list")
    assert ran.returncode == EXIT_CONFIG and "no ledger there" in ran.stderr
    assert not (directory / "state" / "ledger.sqlite").exists()   # a reader creates none
    ran = run("lthnctl", "-c", config, "topup", "1A00112233445566", "1", "--reason", "x")
    assert ran.returncode == EXIT_NOT_ANSWERING
    assert ran.stderr.startswith("Error: paymentd is not answering (no control socket")


def test_bad_arguments_exit_2(tmp_path):
    ran = init(tmp_path / "n", "--name", "A name far too long for Lethean")
    assert ran.returncode == EXIT_CONFIG and "--name: 1 to 16 characters" in ran.stderr
    assert not (tmp_path / "n").exists()


def test_the_node_init_made_runs_and_serves_its_certificate(tmp_path):
    directory = tmp_path / "node"
    assert init(directory).returncode == EXIT_OK
    config = yaml.safe_load((directory / "node.yaml").read_text())
    # loopback ports of this test, and the rest as init wrote it
    ports = default_config(directory / "state")["proxy"]
    config["proxy"].update(bind="127.0.0.1", port=free_port(), squid_port=ports["squid_port"],
                           status_port=ports["status_port"], log_port=ports["log_port"],
                           dns_servers=["127.0.0.1"])
    config["metrics"]["port"] = free_port()
    config["wallet"]["url"] = f"http://127.0.0.1:{free_port()}/json_rpc"
    node = Node(directory, config, ("busd", "authd", "squid", "haproxy"))
    try:
        node.start()
        client = ProxyClient("127.0.0.1", config["proxy"]["port"],
                             directory / "state" / "tls" / "ca.pem")
        answer = wait_for(lambda: client.request("GET", "http://127.0.0.1:9/"), timeout=15,
                          what="haproxy answering with init's certificate")
        assert answer.status == 403 and answer.lthn_status == "NO_PAYMENT"
    finally:
        node.stop()
