"""Check a service descriptor's signature: sdp.json (with sdp.jws beside it) or the .jws.

The signature must be by the provider the descriptor names (its id is the ed25519 public
key), and sdp.json must be byte for byte what was signed; with --provider-id, that
provider too. Needs no config. Exit 0 when valid, 1 when not (tampered, wrong key), 2
when the file cannot be read.

--json keys: valid, provider_id, provider_name, services[], error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lthn import sdp
from lthn.ctl.context import CommandError, print_json
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

NAME = "sdp verify"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="sdp.json (sdp.jws beside it) or an .jws file")
    parser.add_argument("--provider-id", help="require this provider (64 hex characters)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(EXIT_CONFIG, f"{path}: cannot read ({exc.strerror})") from None


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.suffix == ".jws":
        jws_path, document = path, None
    else:
        jws_path, document = sdp.signature_path(path), read(path)
    jws = read(jws_path).decode(errors="replace")
    try:
        result = sdp.verify(jws, document)
        if args.provider_id and result.provider_id != args.provider_id.lower():
            raise sdp.SdpError(f"signed by provider {result.provider_id}, not "
                               f"{args.provider_id.lower()}")
    except sdp.SdpError as exc:
        if args.json:
            print_json({"valid": False, "provider_id": None, "provider_name": None,
                        "services": [], "error": str(exc)})
            return EXIT_FAILED
        raise CommandError(EXIT_FAILED, f"{args.file}: {exc}") from None
    if args.json:
        print_json({"valid": True, "provider_id": result.provider_id,
                    "provider_name": result.provider_name, "services": result.services,
                    "error": ""})
    else:
        print(f"{args.file}: valid, signed by provider {result.provider_id} "
              f"({result.provider_name}); services {', '.join(result.services) or 'none'}")
    return EXIT_OK
