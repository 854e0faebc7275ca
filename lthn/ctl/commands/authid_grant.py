"""Admit an authid by hand, whatever it paid: give it credit and make it ACTIVE.

paymentd does it (it owns credit), in one ledger transaction with an audit line naming
you and your reason. The credit is --coins, or --minutes of its service's price, or by
default the service's first prepaid minutes. A revoked authid is admitted again.

--json keys: authid, state, credit, spent, balance (atomic units), changed.
"""

from __future__ import annotations

import argparse

from lthn.authid import service_of
from lthn.ctl.context import (
    CommandError,
    ask,
    authid_argument,
    check_reason,
    load_config,
    print_changed,
    reason_argument,
    to_atomic,
)
from lthn.exits import EXIT_CONFIG, EXIT_OK
from lthn.requests import Grant

NAME = "authid grant"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("authid", help="16 hex characters, starting with a service id")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--coins", help="credit to give, in coins")
    amount.add_argument("--minutes", type=int, help="credit to give, in minutes of service")
    reason_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    authid = authid_argument(config, args.authid)
    amount = 0   # paymentd's default: the service's first prepaid minutes
    if args.coins is not None:
        amount = to_atomic(args.coins, config.wallet.units, "--coins")
    elif args.minutes is not None:
        if args.minutes < 1:
            raise CommandError(EXIT_CONFIG, f"--minutes: must be 1 or more (got "
                               f"{args.minutes})")
        service = config.service(service_of(authid))
        assert service is not None
        amount = config.atomic(service.cost) * args.minutes
    done = ask(config, "paymentd", Grant(authid=authid, amount=amount,
                                         reason=check_reason(args.reason)), timeout=5.0)
    print_changed(done, config.wallet.units, args.json, "granted")
    return EXIT_OK
