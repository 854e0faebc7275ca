"""Check the node config file and print what is wrong, without starting anything."""

from __future__ import annotations

import argparse

from lthn.cli_args import load_config_or_exit
from lthn.exits import EXIT_OK

NAME = "config check"


def arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config, hint=False)
    services = ", ".join(f"{s.key} ({s.type}, {s.cost}/min)" for s in config.services)
    print(f"{args.config}: OK; services: {services or 'none'}")
    return EXIT_OK
