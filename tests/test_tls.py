"""lthn.tls: the node's CA and provider certificate, made once with the real openssl."""

from __future__ import annotations

import os
import subprocess

from lthn.tls import ensure_certificates


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def test_certificates_chain_and_are_made_once(tmp_path):
    p = ensure_certificates(tmp_path / "tls")
    assert "OK" in openssl("verify", "-CAfile", str(p.ca_cert), str(p.cert))
    assert "prime256v1" in openssl("x509", "-in", str(p.cert), "-noout", "-text")
    for key in (p.key, p.ca_key, p.haproxy_pem):
        assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    pem = p.haproxy_pem.read_text()
    assert pem.startswith(p.cert.read_text()) and p.key.read_text() in pem
    before = {f.name: f.read_bytes() for f in (tmp_path / "tls").iterdir()}
    again = ensure_certificates(tmp_path / "tls")
    assert again == p
    assert {f.name: f.read_bytes() for f in (tmp_path / "tls").iterdir()} == before


def test_a_lost_server_certificate_is_remade_under_the_same_ca(tmp_path):
    p = ensure_certificates(tmp_path)
    ca = p.ca_cert.read_bytes()
    old = p.cert.read_bytes()
    p.cert.unlink()
    ensure_certificates(tmp_path)
    assert p.ca_cert.read_bytes() == ca and p.cert.read_bytes() != old
    assert "OK" in openssl("verify", "-CAfile", str(p.ca_cert), str(p.cert))
    assert p.haproxy_pem.read_text().startswith(p.cert.read_text())
