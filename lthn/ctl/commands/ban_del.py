"""Lift a ban now, by hand (firewalld publishes `ban.lifted`, with an audit line).

Exit 1 when the address is not banned. --json keys: address, lifted (true/false).
"""

from __future__ import annotations

import argparse

from lthn import sources
from lthn.ctl.context import (
    CommandError,
    ask,
    check_reason,
    load_config,
    print_json,
    reason_argument,
)
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.requests import LiftBan

NAME = "ban del"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="the banned address or network, as `ban list` "
                        "shows it")
    reason_argument(parser, default="lifted by hand")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        address = sources.canonical(args.address)
    except sources.SourceError as exc:
        raise CommandError(EXIT_CONFIG, f"address: {exc}") from None
    done = ask(config, "firewalld", LiftBan(address=address,
                                            reason=check_reason(args.reason)), timeout=5.0)
    if args.json:
        print_json({"address": done.address, "lifted": done.changed})
    elif done.changed:
        print(f"{done.address}: ban lifted")
    if not done.changed:
        if args.json:
            return EXIT_FAILED
        raise CommandError(EXIT_FAILED, f"{done.address}: not banned")
    return EXIT_OK
