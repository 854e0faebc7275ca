"""The provider identity and the public service descriptor (`sdp.json`), in Lethean's format,
signed with the provider's ed25519 key (issue #19).

The provider id is the ed25519 public key in hex (64 characters). `sdp.json` is what
Lethean's `lvmgmt --generate-sdp` wrote: protocolVersion, the provider (id, name of at
most 16 characters, nodeType, the CA certificate clients pin, wallet, terms) and its
services with their prices, rules and endpoints (`"proxy": [{"endpoint", "port":
"8180/TCP"}]`, and in VPN mode `"vpn": [{"endpoint", "port": "1194/UDP"}]`). Lethean
signed it when uploading it, as a compact JWS whose parts are
base64url('{"alg":"EdDSA"}'), base64url(the JSON) and the hex ed25519 signature of the
second part; `sdp.jws` beside `sdp.json` holds exactly that line, so a descriptor can
be checked (`lthnctl sdp verify`) and uploaded as Lethean did. Signatures are made and
checked with the `cryptography` library.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lthn.config import Config

PROTOCOL_VERSION = 1
NODE_TYPES = ("residential", "commercial", "government")
MAX_NAME = 16          # Lethean's limit on the provider name
JWS_HEADER = b'{"alg":"EdDSA"}'
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class SdpError(Exception):
    """A descriptor, signature or key that cannot be used; the text says why."""


# --- the provider key ---

def new_provider_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def provider_id(key: Ed25519PrivateKey) -> str:
    """The 64-hex provider id: the raw ed25519 public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex()


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """PEM (PKCS#8), created 0600 and never readable by others, even for a moment."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, path)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """A PEM ed25519 key, or Lethean's key file (64 hex characters: the seed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SdpError(f"{path}: cannot read the provider key ({exc.strerror})") from None
    text = data.strip()
    if HEX64.match(text.decode(errors="replace")):
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode()))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SdpError(f"{path}: not an ed25519 private key in PEM ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SdpError(f"{path}: the key is not ed25519")
    return key


# --- the descriptor ---

@dataclass(frozen=True)
class Publication:
    """What the descriptor says beside the config: where clients connect and who gets paid."""
    endpoint: str          # public address or name of this node
    wallet_address: str    # the provider wallet's public address
    node_type: str = "residential"
    terms: str = "None"


def certificate_content(pem: str) -> str:
    """The CA certificate as Lethean's sdp.json carries it: the PEM without line breaks."""
    return re.sub(r"[\r\n]+", "", pem)


def _coins(value: Decimal) -> Any:
    # a JSON number, as Lethean wrote it; float repr is the shortest exact round trip of
    # the config's decimal for any price the node accepts (whole atomic units)
    return float(value)


def descriptor(config: Config, publication: Publication, ca_pem: str) -> dict[str, Any]:
    """sdp.json's content for this node, in Lethean's format."""
    name = config.provider.name
    if len(name) > MAX_NAME:
        raise SdpError(f'provider.name: at most {MAX_NAME} characters in sdp.json '
                       f'(Lethean\'s limit; got "{name}", {len(name)})')
    if publication.node_type not in NODE_TYPES:
        raise SdpError(f"node type must be one of {', '.join(NODE_TYPES)}")
    services = []
    for svc in config.services:
        proxy = [{"endpoint": publication.endpoint, "port": f"{config.proxy.port}/TCP"}] \
            if svc.type == "proxy" else []
        # what the original client reads to reach OpenVPN: "1194/UDP" (issue #18)
        vpn = [{"endpoint": publication.endpoint,
                "port": f"{config.vpn.port}/{config.vpn.proto.upper()}"}] \
            if svc.type == "vpn" and config.vpn.enabled else []
        services.append({
            "id": svc.key, "name": svc.name, "type": svc.type, "cost": _coins(svc.cost),
            "disable": False, "allowRefunds": svc.allowRefunds,
            "downloadSpeed": svc.downloadSpeed, "uploadSpeed": svc.uploadSpeed,
            "firstPrePaidMinutes": svc.firstPrePaidMinutes,
            "firstVerificationsNeeded": svc.firstVerificationsNeeded,
            "subsequentPrePaidMinutes": svc.subsequentPrePaidMinutes,
            "subsequentVerificationsNeeded": svc.subsequentVerificationsNeeded,
            "certificates": [{"id": 0}],
            "proxy": proxy,
            "vpn": vpn,
        })
    return {
        "protocolVersion": PROTOCOL_VERSION,
        "provider": {
            "id": config.provider.id.lower(),
            "name": name,
            "nodeType": publication.node_type,
            "certificates": [{"id": 0, "cn": "ignored",
                              "content": certificate_content(ca_pem)}],
            "wallet": publication.wallet_address,
            "terms": publication.terms,
        },
        "services": services,
    }


def render(data: dict[str, Any]) -> bytes:
    """The bytes of sdp.json (sorted keys, indent 3, as Lethean's dispatcher wrote it)."""
    return (json.dumps(data, sort_keys=True, indent=3) + "\n").encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def sign(document: bytes, key: Ed25519PrivateKey) -> str:
    """Lethean's upload signature: header.payload.hex(ed25519(payload))."""
    payload = _b64(document)
    return f"{_b64(JWS_HEADER)}.{payload}.{key.sign(payload.encode()).hex()}"


@dataclass(frozen=True)
class Verified:
    provider_id: str
    provider_name: str
    services: list[str]


def verify(jws: str, document: bytes | None = None) -> Verified:
    """Check a signature line (and that it signs `document`, when given); the signer must
    be the provider the signed descriptor names. Raises SdpError saying what failed."""
    parts = jws.strip().split(".")
    if len(parts) != 3:
        raise SdpError("the signature is not three dot-separated parts")
    header_b64, payload_b64, signature_hex = parts
    try:
        header = base64.urlsafe_b64decode(header_b64)
        payload = base64.urlsafe_b64decode(payload_b64)
        signature = bytes.fromhex(signature_hex)
    except (binascii.Error, ValueError):
        raise SdpError("the signature line is not base64url.base64url.hex") from None
    try:
        alg = json.loads(header).get("alg")
    except (ValueError, AttributeError):
        alg = None
    if alg != "EdDSA":
        raise SdpError('the signature\'s header is not {"alg":"EdDSA"}')
    if document is not None and document != payload:
        raise SdpError("sdp.json differs from the descriptor that was signed")
    try:
        data = json.loads(payload)
        provider = data["provider"]
        pid = provider["id"]
    except (ValueError, KeyError, TypeError):
        raise SdpError("the signed descriptor has no provider id") from None
    if not isinstance(pid, str) or not HEX64.match(pid):
        raise SdpError("the signed descriptor's provider id is not 64 hex characters")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pid)).verify(
            signature, payload_b64.encode())
    except (InvalidSignature, ValueError):
        raise SdpError(f"bad signature: not signed by provider {pid}") from None
    return Verified(provider_id=pid.lower(), provider_name=str(provider.get("name", "")),
                    services=[str(s.get("id")) for s in data.get("services", [])
                              if isinstance(s, dict)])


def signature_path(sdp_path: Path) -> Path:
    """sdp.json -> sdp.jws beside it."""
    return sdp_path.with_suffix(".jws")
