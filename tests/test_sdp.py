"""The signed service descriptor (issue #19): Lethean's sdp.json and upload signature,
made and checked with `cryptography`; anything tampered fails and says what."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lthn import sdp
from lthn.config import parse, read_sdp

CA = "-----BEGIN CERTIFICATE-----\nMIIBozCCAUmgAwIBAgIU\nUw9YDIQO1rlh\n-----END CERTIFICATE-----\n"


def node_config(pid: str, **provider):
    return parse({"provider": {"id": pid, "name": "Test node", **provider},
                  "state_dir": "/tmp/x",
                  "services": [{"id": "1a", "name": "Proxy", "type": "proxy",
                                "cost": "0.00012345", "firstPrePaidMinutes": 12},
                               {"id": "2B", "name": "VPN", "type": "vpn", "cost": "0.01"}],
                  "proxy": {"port": 8443}}, "test.yaml")


@pytest.fixture
def key():
    return sdp.new_provider_key()


def signed(key, **provider):
    config = node_config(sdp.provider_id(key), **provider)
    doc = sdp.render(sdp.descriptor(config, sdp.Publication("node.example.invalid",
                                                            "iz" + "1" * 95), CA))
    return doc, sdp.sign(doc, key)


def test_the_descriptor_is_lethean_shaped(key):
    doc, _ = signed(key)
    data = json.loads(doc)
    assert data["protocolVersion"] == 1
    assert data["provider"]["id"] == sdp.provider_id(key)
    assert len(data["provider"]["id"]) == 64
    assert data["provider"]["certificates"] == [
        {"id": 0, "cn": "ignored", "content": CA.replace("\n", "")}]
    assert data["provider"]["nodeType"] == "residential"
    proxy, vpn = data["services"]
    assert proxy["id"] == "1A" and proxy["cost"] == 0.00012345
    assert proxy["firstPrePaidMinutes"] == 12
    assert proxy["proxy"] == [{"endpoint": "node.example.invalid", "port": "8443/TCP"}]
    assert vpn["proxy"] == [] and vpn["type"] == "vpn"
    # Lethean's dispatcher wrote it with sorted keys and an indent of 3
    assert doc.startswith(b'{\n   "protocolVersion": 1,')


def test_a_descriptor_imports_back_as_the_same_services(key, tmp_path):
    doc, _ = signed(key)
    path = tmp_path / "sdp.json"
    path.write_bytes(doc)
    services = read_sdp(str(path), "test.yaml")
    again = parse({"provider": {"id": sdp.provider_id(key)}, "state_dir": "/tmp/x",
                   "services": services}, "test.yaml")
    assert [(s.key, s.cost, s.firstPrePaidMinutes) for s in again.services] == [
        ("1A", node_config(sdp.provider_id(key)).services[0].cost, 12),
        ("2B", node_config(sdp.provider_id(key)).services[1].cost, 10)]


def test_the_signature_is_lethean_s_upload_header(key):
    doc, jws = signed(key)
    header, payload, signature = jws.split(".")
    assert base64.urlsafe_b64decode(header) == b'{"alg":"EdDSA"}'
    assert base64.urlsafe_b64decode(payload) == doc
    assert len(signature) == 128
    key.public_key().verify(bytes.fromhex(signature), payload.encode())
    result = sdp.verify(jws, doc)
    assert result.provider_id == sdp.provider_id(key) and result.services == ["1A", "2B"]


def test_a_changed_document_fails(key):
    doc, jws = signed(key)
    with pytest.raises(sdp.SdpError, match="differs from the descriptor that was signed"):
        sdp.verify(jws, doc.replace(b'"firstPrePaidMinutes": 12', b'"firstPrePaidMinutes": 1'))


def test_a_changed_signed_payload_fails(key):
    doc, jws = signed(key)
    header, _, signature = jws.split(".")
    forged = doc.replace(b"0.00012345", b"0.00000001")
    jws2 = f"{header}.{base64.urlsafe_b64encode(forged).decode()}.{signature}"
    with pytest.raises(sdp.SdpError, match="bad signature"):
        sdp.verify(jws2, forged)


def test_a_descriptor_signed_by_another_key_than_it_names_fails(key):
    doc, _ = signed(key)
    other = sdp.new_provider_key()
    with pytest.raises(sdp.SdpError, match=f"not signed by provider {sdp.provider_id(key)}"):
        sdp.verify(sdp.sign(doc, other), doc)


@pytest.mark.parametrize("jws, words", [
    ("abc", "three dot-separated parts"),
    ("a.b.zz", "not base64url.base64url.hex"),
    (base64.urlsafe_b64encode(b'{"alg":"none"}').decode() + ".e30=." + "00" * 64,
     "alg"),
    (base64.urlsafe_b64encode(b'{"alg":"EdDSA"}').decode() + ".e30=." + "00" * 64,
     "no provider id"),
])
def test_malformed_signatures_fail_with_a_reason(jws, words):
    with pytest.raises(sdp.SdpError, match=words):
        sdp.verify(jws)


def test_keys_round_trip_as_pem_0600_and_lethean_hex_seeds_are_read(key, tmp_path: Path):
    path = tmp_path / "provider.key"
    sdp.write_private_key(key, path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sdp.provider_id(sdp.read_private_key(path)) == sdp.provider_id(key)
    seed = tmp_path / "lethean.seed"
    from cryptography.hazmat.primitives import serialization
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    seed.write_text(raw.hex() + "\n")
    assert sdp.provider_id(sdp.read_private_key(seed)) == sdp.provider_id(key)
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(sdp.SdpError, match="not an ed25519 private key"):
        sdp.read_private_key(tmp_path / "junk")


def test_a_provider_name_over_lethean_s_limit_is_refused(key):
    with pytest.raises(sdp.SdpError, match="at most 16 characters"):
        signed(key, name="A much too long provider name")
