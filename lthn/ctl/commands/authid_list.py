"""List authids from the ledger, most recently changed first (coins and local times).

--json keys: authids[] (authid, service_id, state, balance, credit, pending, spent,
payments, activations, charged_ms, created, modified, activated_at, spending_since,
last_used); money in atomic units, times in unix seconds (null when never).
"""

from __future__ import annotations

import argparse
import dataclasses

from lthn.access import State
from lthn.ctl.context import (
    CommandError,
    coins,
    load_config,
    local_time,
    print_json,
    print_table,
    reading_ledger,
)
from lthn.exits import EXIT_CONFIG, EXIT_OK
from lthn.ledger import AuthidRow

NAME = "authid list"
STATES = [s.value for s in State]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=str.upper, choices=STATES, help="only this state")
    parser.add_argument("--service", help="only this service id (two hex characters)")
    parser.add_argument("--limit", type=int, default=100, metavar="N",
                        help="at most N authids (default 100)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def authid_json(row: AuthidRow) -> dict:
    return dataclasses.asdict(row) | {"balance": row.balance}


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    service = args.service.upper() if args.service else None
    if service is not None and config.service(service) is None:
        known = ", ".join(s.key for s in config.services) or "none"
        raise CommandError(EXIT_CONFIG, f'--service: no service "{args.service}" in the '
                           f"config (services: {known})")
    if args.limit < 1:
        raise CommandError(EXIT_CONFIG, f"--limit: must be 1 or more (got {args.limit})")
    with reading_ledger(config) as ledger:
        rows = ledger.list_authids(args.state, service, args.limit)
    if args.json:
        print_json({"authids": [authid_json(r) for r in rows]})
        return EXIT_OK
    if not rows:
        print("no authids")
        return EXIT_OK
    units = config.wallet.units
    print_table(["AUTHID", "SERVICE", "STATE", "BALANCE", "PENDING", "PAYMENTS", "ACTIVATED",
                 "LAST USED", "CHANGED"],
                [[r.authid, r.service_id, r.state, coins(r.balance, units),
                  coins(r.pending, units), r.payments, local_time(r.activated_at),
                  local_time(r.last_used), local_time(r.modified)] for r in rows])
    return EXIT_OK
