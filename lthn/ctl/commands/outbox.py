"""Count the bus messages queued in the ledger's outbox and list those kept stuck.

A stuck row is a message this node's programs could not decode (an unknown topic or
version, e.g. written by a newer program, or a broken body). It is kept, never deleted
unread, and tried again only by a program whose message catalogue differs (after an
upgrade). Reads the ledger without changing it; a missing ledger is an error (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from lthn.cli_args import load_config_or_exit
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.ledger import Ledger, LedgerError, LedgerMissing

NAME = "outbox"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=100, metavar="N",
                        help="list at most N stuck rows, oldest first (default 100)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config, hint=False)
    if args.limit < 0:
        print(f"Error: --limit: must be 0 or more (got {args.limit})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # read only: an empty ledger is never created just to report on it
        ledger = Ledger.open_existing(config.ledger_path)
    except LedgerMissing as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LedgerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        counts = ledger.outbox_counts()
        stuck = ledger.stuck_outbox(args.limit)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"queued": counts.queued, "stuck": counts.stuck,
                          "stuck_rows": [dataclasses.asdict(r) for r in stuck]}, indent=2))
        return EXIT_OK
    print(f"queued  {counts.queued}")
    print(f"stuck   {counts.stuck}")
    if stuck:
        print()
        print(f"{'ID':>8}  {'TOPIC':24} {'VERSION':>7}  {'STUCK SINCE':19}  ERROR")
        for r in stuck:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.since))
            print(f"{r.id:>8}  {r.topic[:24]:24} {r.version:>7}  {since:19}  {r.error}")
        if counts.stuck > len(stuck):
            print(f"(the oldest {len(stuck)} of {counts.stuck}; --limit N lists more)")
    return EXIT_OK
