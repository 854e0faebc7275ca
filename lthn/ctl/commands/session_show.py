"""Show one session from the ledger (local times).

--json keys: as each entry of `session list --json`.
"""

from __future__ import annotations

import argparse

from lthn.ctl.commands.session_list import session_json
from lthn.ctl.context import CommandError, load_config, local_time, print_json, reading_ledger
from lthn.exits import EXIT_FAILED, EXIT_OK

NAME = "session show"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int, help="session id (from `session list`)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with reading_ledger(config) as ledger:
        session = ledger.session(args.id)
    if session is None:
        raise CommandError(EXIT_FAILED, f"session {args.id}: not in the ledger")
    data = session_json(session)
    if args.json:
        print_json(data)
        return EXIT_OK
    for key, value in data.items():
        if key in ("started", "ended"):
            value = local_time(value)
        print(f"{key:11} {'-' if value is None or value == '' else value}")
    return EXIT_OK
