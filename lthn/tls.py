"""The node's certificates: an EC P-256 CA and the provider certificate it signs.

Lethean clients verify the provider certificate against the CA published in the node's
sdp.json (`certArray[0].certContent`) and do not check the host name, so one CA and one
server certificate made once per node is all the proxy needs. Made with plain `openssl`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lthn.files import write_atomically

CA_DAYS = 3650
CERT_DAYS = 3650
SUBJECT_CA = "/CN=Lethean exit node CA"
SUBJECT_SERVER = "/CN=Lethean exit node"


class CertificateError(RuntimeError):
    """openssl failed; the text carries its own error output."""


class CertificateMistake(ValueError):
    """The configured certificate file is not one haproxy can serve (the operator's)."""


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path          # CA certificate (PEM), what sdp.json publishes
    ca_key: Path           # CA private key, kept to sign a new server certificate later
    cert: Path             # provider certificate (PEM)
    key: Path              # provider private key (PEM)
    haproxy_pem: Path      # certificate, CA and key in one file, for haproxy's `crt`


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def paths_in(directory: str | os.PathLike) -> CertificatePaths:
    d = Path(directory)
    return CertificatePaths(ca_cert=d / "ca.pem", ca_key=d / "ca.key", cert=d / "provider.crt",
                            key=d / "provider.key", haproxy_pem=d / "provider.pem")


def ensure_certificates(directory: str | os.PathLike) -> CertificatePaths:
    """Create the CA, the provider certificate and haproxy's PEM unless they exist already.

    Idempotent: existing files are kept (clients pinned the CA), missing ones are made.
    """
    p = paths_in(directory)
    p.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(p.ca_cert.parent, 0o700)
    old_umask = os.umask(0o077)  # private keys must never be readable by others
    try:
        if not (p.ca_cert.exists() and p.ca_key.exists()):
            _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(p.ca_key))
            _openssl("req", "-x509", "-new", "-key", str(p.ca_key), "-sha256",
                     "-days", str(CA_DAYS), "-subj", SUBJECT_CA,
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-out", str(p.ca_cert))
            for stale in (p.cert, p.key, p.haproxy_pem):
                stale.unlink(missing_ok=True)  # signed by a CA that no longer exists
        if not (p.cert.exists() and p.key.exists()):
            _make_server_certificate(p)
            p.haproxy_pem.unlink(missing_ok=True)
        if not p.haproxy_pem.exists():
            write_atomically(p.haproxy_pem,
                             p.cert.read_text() + p.ca_cert.read_text() + p.key.read_text())
    finally:
        os.umask(old_umask)
    return p


def _make_server_certificate(p: CertificatePaths) -> None:
    csr = p.cert.with_suffix(".csr")
    ext = p.cert.with_suffix(".ext")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(p.key))
    _openssl("req", "-new", "-key", str(p.key), "-subj", SUBJECT_SERVER, "-out", str(csr))
    ext.write_text("basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\n"
                   "subjectAltName=DNS:remote.lethean,DNS:localhost,IP:127.0.0.1\n")
    try:
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(p.ca_cert), "-CAkey", str(p.ca_key),
                 "-CAcreateserial", "-sha256", "-days", str(CERT_DAYS), "-extfile", str(ext),
                 "-out", str(p.cert))
    finally:
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
        p.ca_cert.with_suffix(".srl").unlink(missing_ok=True)


def certificate_problem(path: str | os.PathLike, key: str = "proxy.certificate") -> str | None:
    """What is wrong with a configured PEM file haproxy is to serve (its certificate and
    private key in one file), as `KEY: ...`, or None. One check for lthn-node run and
    lthn-haproxy, so the same mistake gets the same line and exit code (#14)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"{key}: {path} does not exist"
    except OSError as exc:
        return f"{key}: cannot read {path} ({exc.strerror})"
    if "-----BEGIN CERTIFICATE-----" not in text or "PRIVATE KEY-----" not in text:
        return f"{key}: {path} must hold the certificate and its private key in PEM"
    return None
