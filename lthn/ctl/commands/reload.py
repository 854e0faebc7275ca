"""Check the config, then ask every running daemon to re-read it (SIGHUP through
supervisord).

What a daemon applies on reload: the log level; authd also rebuilds haproxy's map from
the ledger. Every other change is logged by each daemon with the program to restart
(`lthn-node ctl -c CONFIG restart PROGRAM`); haproxy and squid are rendered at their
start, so changes to them need that restart too. A config with a mistake stops here
(exit 2) and nothing is signalled. There is no `lthn-node reload` yet: this is it.

--json keys: signalled[] (process names), skipped[] (not running).
"""

from __future__ import annotations

import argparse

from lthn.ctl.context import ANSWERING, CommandError, load_config, print_json, supervisor
from lthn.exits import EXIT_FAILED, EXIT_NOT_ANSWERING, EXIT_OK
from lthn.node.supervisor_rpc import SupervisorDown, SupervisorFault

NAME = "reload"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)   # a mistake: `Error: ...`, exit 2, nothing signalled
    rpc = supervisor(config)
    try:
        processes = [p for p in rpc.processes() if p.group in ANSWERING]
        signalled, skipped = [], []
        for p in processes:
            if p.state != "RUNNING":
                skipped.append(p.name)
                continue
            rpc.signal(p.full_name, "HUP")
            signalled.append(p.name)
    except SupervisorDown as exc:
        raise CommandError(EXIT_NOT_ANSWERING, str(exc)) from None
    except SupervisorFault as exc:
        raise CommandError(EXIT_FAILED, f"supervisord: {exc}") from None
    if args.json:
        print_json({"signalled": signalled, "skipped": skipped})
    else:
        print(f"{config.source}: OK; asked to reload: {', '.join(signalled) or 'none'}"
              + (f"; not running: {', '.join(skipped)}" if skipped else ""))
    return EXIT_OK
