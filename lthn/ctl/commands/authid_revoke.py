"""Refuse an authid by hand and cut its live sessions now.

sessiond does it (it owns cutting), in one ledger transaction with an audit line naming
you and your reason. The authid stays refused (state REVOKED) whatever it pays, until
`authid grant`; its credit is kept. Revoking a revoked authid changes nothing (exit 0,
"changed": false).

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
)
from lthn.exits import EXIT_OK
from lthn.requests import Revoke

NAME = "authid revoke"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("authid", help="16 hex characters")
    reason_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    authid = authid_argument(config, args.authid)
    done = ask(config, "sessiond", Revoke(authid=authid, reason=check_reason(args.reason)),
               timeout=5.0)
    print_changed(done, config.wallet.units, args.json,
                  "revoked" if done.changed else "was already revoked")
    return EXIT_OK
