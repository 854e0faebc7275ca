"""Write sdp.json from the config and sign it with the provider key (after the services,
prices or port changed), keeping the endpoint, wallet address and node type it had.

Reads the provider key from `provider.key` in the config and the CA from the node's
certificates (`proxy.ca`, or STATE_DIR/tls/ca.pem). Writes FILE (default sdp.json next to
the config) and its signature beside it (.jws).

--json keys: file, signature, provider_id.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lthn import sdp
from lthn.ctl.context import CommandError, load_config, print_json
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

NAME = "sdp sign"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="descriptor to write (default: sdp.json "
                        "beside the config)")
    parser.add_argument("--endpoint", help="public address clients connect to (default: "
                        "the one FILE has)")
    parser.add_argument("--wallet-address", help="default: the one FILE has")
    parser.add_argument("--node-type", choices=sdp.NODE_TYPES, help="default: FILE's")
    parser.add_argument("--json", action="store_true", help="print JSON")


def previous(path: Path) -> dict:
    """What the existing descriptor published (endpoint, wallet, node type, terms)."""
    try:
        data = json.loads(path.read_bytes())
        provider = data["provider"]
        endpoint = next((p["endpoint"] for s in data["services"] for p in s.get("proxy") or []
                         if isinstance(p, dict) and p.get("endpoint")), None)
        return {"endpoint": endpoint, "wallet": provider.get("wallet", ""),
                "nodeType": provider.get("nodeType"), "terms": provider.get("terms", "None")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.provider.key:
        raise CommandError(EXIT_CONFIG, f"{config.source}: provider.key: names no key file "
                           "(lthn-node init makes one)")
    path = Path(args.file) if args.file else Path(config.source).parent / "sdp.json"
    old = previous(path)
    endpoint = args.endpoint or old.get("endpoint")
    if not endpoint:
        raise CommandError(EXIT_CONFIG, f"--endpoint: needed ({path} has none to keep)")
    ca_path = Path(config.proxy.ca) if config.proxy.ca else config.state / "tls" / "ca.pem"
    try:
        key = sdp.read_private_key(Path(config.provider.key))
        if sdp.provider_id(key) != config.provider.id.lower():
            raise sdp.SdpError(f"provider.key: {config.provider.key} is not the key of "
                               f"provider.id {config.provider.id}")
        publication = sdp.Publication(
            endpoint=endpoint, wallet_address=args.wallet_address or old.get("wallet", ""),
            node_type=args.node_type or old.get("nodeType") or "residential",
            terms=old.get("terms", "None"))
        document = sdp.render(sdp.descriptor(config, publication, ca_path.read_text()))
    except OSError as exc:
        raise CommandError(EXIT_FAILED, f"{ca_path}: cannot read the CA ({exc.strerror})"
                           ) from None
    except sdp.SdpError as exc:
        raise CommandError(EXIT_CONFIG, f"{config.source}: {exc}") from None
    path.write_bytes(document)
    sdp.signature_path(path).write_text(sdp.sign(document, key) + "\n")
    if args.json:
        print_json({"file": str(path), "signature": str(sdp.signature_path(path)),
                    "provider_id": config.provider.id.lower()})
    else:
        print(f"{path}: written and signed ({sdp.signature_path(path).name}) by provider "
              f"{config.provider.id.lower()}")
    return EXIT_OK
