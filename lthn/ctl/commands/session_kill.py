"""Cut an open session's live connections now (sessiond does it, with an audit line).

The authid stays active: its client may connect again, and a new session opens. To refuse
the authid itself, use `authid revoke`. Exit 1 when no live connection could be found to
cut (e.g. streams opened before sessiond last restarted).

--json keys: session_id, authid, kind, connections (how many were cut).
"""

from __future__ import annotations

import argparse

from lthn.ctl.context import (
    CommandError,
    ask,
    check_reason,
    load_config,
    print_json,
    reason_argument,
)
from lthn.exits import EXIT_FAILED, EXIT_OK
from lthn.requests import KillSession

NAME = "session kill"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int, help="session id (from `session list`)")
    reason_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    done = ask(config, "sessiond", KillSession(session_id=args.id,
                                               reason=check_reason(args.reason)), timeout=5.0)
    if args.json:
        print_json({"session_id": done.session_id, "authid": done.authid, "kind": done.kind,
                    "connections": done.connections})
    elif done.connections:
        print(f"session {done.session_id} ({done.authid}): cut {done.connections} "
              "connections")
    if not done.connections:
        if args.json:
            return EXIT_FAILED
        raise CommandError(EXIT_FAILED, f"session {done.session_id} ({done.authid}): no live "
                           "connection found to cut")
    return EXIT_OK
