"""Ban a source address or network (CIDR) for a while, by hand.

firewalld stores the ban in the ledger with an audit line (who, why), publishes
`ban.added` and enforces it at once (haproxy's ban map, nftables where used); a ban
already in force is extended, never shortened. An address firewalld never bans
(firewall.never_ban, the allow list's entries) is refused.

--json keys: address, reason, expires (unix time).
"""

from __future__ import annotations

import argparse

from lthn import sources
from lthn.ctl.context import (
    CommandError,
    ask,
    check_reason,
    load_config,
    local_time,
    parse_duration,
    print_json,
    reason_argument,
)
from lthn.exits import EXIT_CONFIG, EXIT_OK
from lthn.requests import AddBan

NAME = "ban add"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="IP address or network, e.g. 203.0.113.7 or "
                        "203.0.113.0/24")
    parser.add_argument("--for", dest="duration", default="1h",
                        help="how long: 90s, 30m, 12h, 7d (default 1h)")
    reason_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        address = sources.canonical(args.address)
    except sources.SourceError as exc:
        raise CommandError(EXIT_CONFIG, f"address: {exc}") from None
    seconds = parse_duration(args.duration, "--for")
    reason = check_reason(args.reason)
    done = ask(config, "firewalld", AddBan(address=address, seconds=seconds,
                                           reason=reason), timeout=5.0)
    if args.json:
        print_json({"address": done.address, "reason": done.reason, "expires": done.expires})
    else:
        print(f"{done.address}: banned until {local_time(done.expires)} ({done.reason})")
    return EXIT_OK
