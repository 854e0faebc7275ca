"""Check the node config file and print what is wrong, without starting anything."""

from __future__ import annotations

import argparse
import sys

from lthn import config as config_mod
from lthn.exits import EXIT_CONFIG, EXIT_OK
from lthn.schema import ConfigError

NAME = "config check"


def arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    try:
        config = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    services = ", ".join(f"{s.key} ({s.type}, {s.cost}/min)" for s in config.services)
    print(f"{args.config}: OK; services: {services or 'none'}")
    return EXIT_OK
