"""Show an authid's balance, state and payments from the ledger."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lthn.authid import AuthidError, parse_authid
from lthn.cli_args import load_config_or_exit
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.ledger import Ledger

NAME = "authid show"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("authid", help="16 hex characters")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config, hint=False)
    try:
        authid = parse_authid(args.authid)
    except AuthidError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    ledger = Ledger.open(config.ledger_path)
    try:
        row = ledger.authid(authid)
        if row is None:
            print(f"Error: authid {authid}: not in the ledger", file=sys.stderr)
            return EXIT_FAILED
        payments = [dataclasses.asdict(p) for p in ledger.payments_of(authid)]
    finally:
        ledger.close()
    data = dataclasses.asdict(row) | {"balance": row.balance, "payments_list": payments}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            if key != "payments_list":
                print(f"{key:16} {value}")
        for p in payments:
            print(f"payment  {p['txid'][:16]}  {p['amount']}  {p['state']}  "
                  f"conf={p['confirmations']}  spendable={p['spendable']}")
    return EXIT_OK
