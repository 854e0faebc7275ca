"""Add credit to an authid by hand, in coins.

paymentd does it (it owns credit), in one ledger transaction with an audit line naming
you and your reason; the credit rules then decide activation as for a payment (a
revoked authid stays revoked). An authid not yet in the ledger is added.

--json keys: authid, state, credit, spent, balance (atomic units), changed.
"""

from __future__ import annotations

import argparse

from lthn.ctl.context import (
    ask,
    authid_argument,
    check_reason,
    load_config,
    print_changed,
    reason_argument,
    to_atomic,
)
from lthn.exits import EXIT_OK
from lthn.requests import Topup

NAME = "topup"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("authid", help="16 hex characters, starting with a service id")
    parser.add_argument("coins", help="credit to add, in coins")
    reason_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    authid = authid_argument(config, args.authid)
    amount = to_atomic(args.coins, config.wallet.units, "coins")
    done = ask(config, "paymentd", Topup(authid=authid, amount=amount,
                                         reason=check_reason(args.reason)), timeout=5.0)
    print_changed(done, config.wallet.units, args.json, f"topped up {args.coins}")
    return EXIT_OK
