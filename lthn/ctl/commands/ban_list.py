"""List the bans in force, soonest to expire first (read from the ledger).

--json keys: bans[] (address, reason, created, expires, count); times are unix seconds.
"""

from __future__ import annotations

import argparse

from lthn.ctl.context import load_config, local_time, print_json, print_table, reading_ledger
from lthn.exits import EXIT_OK

NAME = "ban list"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with reading_ledger(config) as ledger:
        bans = ledger.bans()
    if args.json:
        print_json({"bans": [{"address": b.ip, "reason": b.reason, "created": b.created,
                              "expires": b.expires, "count": b.count} for b in bans]})
        return EXIT_OK
    if not bans:
        print("no bans in force")
        return EXIT_OK
    print_table(["ADDRESS", "SINCE", "UNTIL", "COUNT", "REASON"],
                [[b.ip, local_time(b.created), local_time(b.expires), b.count, b.reason]
                 for b in bans])
    return EXIT_OK
