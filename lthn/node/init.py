"""`lthn-node init DIR`: a node from nothing (issue #19).

Makes, in DIR:
    provider.key     the provider's ed25519 private key (PEM, 0600): signs sdp.json
    node.yaml        the commented config (every setting; 0600), with the provider id
                     (the public key in hex), the key file and state_dir = DIR/state
    state/tls/       the node's CA and the server certificate (and keys, 0600) haproxy
                     serves and OpenVPN uses; ca.pem is what clients pin
    sdp.json         the public service descriptor, Lethean's format
    sdp.jws          its signature by the provider key (`lthnctl sdp verify` checks it)

It refuses to overwrite any of them unless --force (then it makes them all anew: a new
provider id, a new CA that clients must pin again). The config is checked by loading it
before init says it is done.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

from lthn import sdp
from lthn.config import load as load_config
from lthn.config_sample import SAMPLE_SERVICE, sample
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.schema import ConfigError
from lthn.tls import CertificateError, ensure_certificates

DEFAULT_NAME = "LTHN exit node"


def made_paths(directory: Path) -> list[Path]:
    return [directory / "provider.key", directory / "node.yaml", directory / "sdp.json",
            directory / "sdp.jws", directory / "state" / "tls"]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="directory for the node (made if missing)")
    parser.add_argument("--endpoint", default=None,
                        help="public address or name clients connect to, published in "
                        "sdp.json (default: this host's name)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help=f'provider name, at most {sdp.MAX_NAME} characters (default '
                        f'"{DEFAULT_NAME}")')
    parser.add_argument("--wallet-address", default="",
                        help="the provider wallet's public address, published in sdp.json")
    parser.add_argument("--node-type", choices=sdp.NODE_TYPES, default="residential",
                        help="published in sdp.json (default residential)")
    parser.add_argument("--port", type=int, default=8180,
                        help="TLS port of the proxy (default 8180)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing node's files (new provider id, new CA)")


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    problem = check_arguments(args)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    present = [p for p in made_paths(directory) if p.exists()]
    if present and not args.force:
        print(f"Error: {directory}: already holds {', '.join(p.name for p in present)}; "
              "refusing to overwrite (add --force to make a new node there: new provider "
              "id, new CA)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        made = make_node(directory, args)
    except (OSError, CertificateError, sdp.SdpError, ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(made)
    return EXIT_OK


def check_arguments(args: argparse.Namespace) -> str | None:
    if not args.name or len(args.name) > sdp.MAX_NAME:
        return f'--name: 1 to {sdp.MAX_NAME} characters (got "{args.name}")'
    if not 1 <= args.port <= 65535:
        return f"--port: must be a TCP port (1-65535), got {args.port}"
    return None


def make_node(directory: Path, args: argparse.Namespace) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    state = directory / "state"
    if args.force:
        shutil.rmtree(state / "tls", ignore_errors=True)
    for sub in (state, state / "run", state / "log", state / "tls"):
        sub.mkdir(exist_ok=True)
        os.chmod(sub, 0o700)
    key = sdp.new_provider_key()
    pid = sdp.provider_id(key)
    key_path = directory / "provider.key"
    sdp.write_private_key(key, key_path)
    tls = ensure_certificates(state / "tls")
    config_path = directory / "node.yaml"
    text = sample({"provider.id": pid, "provider.name": args.name,
                   "provider.key": str(key_path), "proxy.port": args.port,
                   "state_dir": str(state)})
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    config = load_config(config_path)   # what init wrote must be a valid config
    endpoint = args.endpoint or socket.getfqdn()
    publication = sdp.Publication(endpoint=endpoint, wallet_address=args.wallet_address,
                                  node_type=args.node_type)
    document = sdp.render(sdp.descriptor(config, publication, tls.ca_cert.read_text()))
    sdp_path = directory / "sdp.json"
    sdp_path.write_bytes(document)
    sdp.signature_path(sdp_path).write_text(sdp.sign(document, key) + "\n")
    services = ", ".join(f"{s.key} ({s.type}, {s.cost}/min)" for s in config.services)
    return "\n".join([
        f"Made a node in {directory}:",
        f"  provider id   {pid}",
        f"  provider key  {key_path} (secret; keep a copy offline)",
        f"  config        {config_path} (services: {services})",
        f"  certificates  {tls.ca_cert} (clients pin this CA), {tls.haproxy_pem}",
        f"  descriptor    {sdp_path}, signed in {sdp.signature_path(sdp_path).name} "
        f"(endpoint {endpoint}:{args.port})",
        "",
        "Next:",
        f"  $EDITOR {config_path}          # wallet.url, services (sample: "
        f"{SAMPLE_SERVICE['id']} at {SAMPLE_SERVICE['cost']}/min)",
        f"  lthnctl -c {config_path} config check",
        f"  lthn-node run -c {config_path}",
        f"  lthnctl sdp verify {sdp_path}",
    ])
