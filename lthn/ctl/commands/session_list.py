"""List sessions from the ledger, newest first: the open ones, or with --all every one.

--json keys: sessions[] (id, kind, authid, service, source, state, started, ended,
end_reason, bytes_in, bytes_out); times are unix seconds, null while open.
"""

from __future__ import annotations

import argparse

from lthn.authid import AuthidError, parse_authid
from lthn.ctl.context import (
    CommandError,
    load_config,
    local_time,
    print_json,
    print_table,
    reading_ledger,
)
from lthn.exits import EXIT_CONFIG, EXIT_OK
from lthn.ledger import SessionRow

NAME = "session list"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="closed sessions too")
    parser.add_argument("--authid", help="only this authid's")
    parser.add_argument("--kind", choices=("proxy", "vpn"), help="only this kind")
    parser.add_argument("--limit", type=int, default=100, metavar="N",
                        help="at most N sessions (default 100)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def session_json(s: SessionRow) -> dict:
    return {"id": s.id, "kind": s.kind, "authid": s.authid, "service": s.authid[:2],
            "source": s.source, "state": s.state, "started": s.started, "ended": s.ended,
            "end_reason": s.end_reason, "bytes_in": s.bytes_in, "bytes_out": s.bytes_out}


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    authid = None
    if args.authid:
        try:
            authid = parse_authid(args.authid)
        except AuthidError as exc:
            raise CommandError(EXIT_CONFIG, f"--authid: {exc}") from None
    if args.limit < 1:
        raise CommandError(EXIT_CONFIG, f"--limit: must be 1 or more (got {args.limit})")
    with reading_ledger(config) as ledger:
        sessions = ledger.list_sessions(open_only=not args.all, authid=authid,
                                        kind=args.kind, limit=args.limit)
    if args.json:
        print_json({"sessions": [session_json(s) for s in sessions]})
        return EXIT_OK
    if not sessions:
        print("no open sessions" if not args.all else "no sessions")
        return EXIT_OK
    print_table(["ID", "KIND", "AUTHID", "SOURCE", "STATE", "STARTED", "ENDED", "BYTES IN",
                 "BYTES OUT", "END REASON"],
                [[s.id, s.kind, s.authid, s.source, s.state, local_time(s.started),
                  local_time(s.ended), s.bytes_in, s.bytes_out, s.end_reason]
                 for s in sessions])
    return EXIT_OK
