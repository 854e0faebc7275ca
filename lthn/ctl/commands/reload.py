"""Check the config, then apply it to the running node without a restart: the same as
`lthn-node reload` (lthn/node/reload.py).

haproxy and squid check the configs rendered from it first; then every running program
gets SIGHUP through supervisord: haproxy reloads without refusing a connection, squid
reconfigures, the daemons read the config again. A setting a reload cannot apply is
named with the program to restart (`lthn-node ctl -c CONFIG restart PROGRAM`). A config
with a mistake stops here (exit 2) and nothing is signalled.

--json keys: signalled[] (process names), skipped[] (not running), restarts[] (setting,
restart).
"""

from __future__ import annotations

import argparse

from lthn.ctl.context import CommandError, load_config, print_json
from lthn.exits import EXIT_OK
from lthn.node.reload import ReloadError, reload

NAME = "reload"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)   # a mistake: `Error: ...`, exit 2, nothing signalled
    try:
        done = reload(config, args.config)
    except ReloadError as exc:
        raise CommandError(exc.code, str(exc)) from None
    if args.json:
        print_json({"signalled": done.signalled, "skipped": done.skipped,
                    "restarts": [{"setting": k, "restart": r} for k, r in done.restarts]})
        return EXIT_OK
    print(f"{config.source}: OK; asked to reload: {', '.join(done.signalled) or 'none'}"
          + (f"; not running: {', '.join(done.skipped)}" if done.skipped else ""))
    for key, restart in done.restarts:
        print(f"{key} changed, which a reload cannot apply: restart {restart}")
    return EXIT_OK
