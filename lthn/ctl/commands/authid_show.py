"""Show an authid's balance, state and payments from the ledger (coins, local times).

--json keys: the keys of `authid list --json`, plus payments_list[] (txid, authid,
amount, height, confirmations, state, spendable, ordinal, first_seen, updated); money in
atomic units, times in unix seconds.
"""

from __future__ import annotations

import argparse
import dataclasses

from lthn.authid import AuthidError, parse_authid
from lthn.ctl.commands.authid_list import authid_json
from lthn.ctl.context import (
    CommandError,
    coins,
    load_config,
    local_time,
    print_json,
    print_table,
    reading_ledger,
)
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

NAME = "authid show"
MONEY = ("balance", "credit", "pending", "spent")
TIMES = ("created", "modified", "activated_at", "spending_since", "last_used")


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("authid", help="16 hex characters")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        authid = parse_authid(args.authid)
    except AuthidError as exc:
        raise CommandError(EXIT_CONFIG, str(exc)) from None
    with reading_ledger(config) as ledger:
        row = ledger.authid(authid)
        if row is None:
            raise CommandError(EXIT_FAILED, f"authid {authid}: not in the ledger")
        payments = [dataclasses.asdict(p) for p in ledger.payments_of(authid)]
    data = authid_json(row) | {"payments_list": payments}
    if args.json:
        print_json(data)
        return EXIT_OK
    units = config.wallet.units
    for key, value in data.items():
        if key in MONEY:
            value = coins(value, units)
        elif key in TIMES:
            value = local_time(value)
        if key != "payments_list":
            print(f"{key:16} {value}")
    if payments:
        print()
        print_table(["TXID", "AMOUNT", "STATE", "CONFIRMATIONS", "SPENDABLE", "SEEN"],
                    [[p["txid"], coins(p["amount"], units), p["state"], p["confirmations"],
                      "yes" if p["spendable"] else "no", local_time(p["first_seen"])]
                     for p in payments])
    return EXIT_OK
