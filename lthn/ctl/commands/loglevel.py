"""Set a daemon's log level until it restarts (the config's log_level applies again then).

PROGRAM is paymentd, authd (every authd process), sessiond, firewalld or watchd, or one
process such as authd_1. LEVEL is debug, info, warning or error.

--json keys: processes[] (process, previous, level).
"""

from __future__ import annotations

import argparse

from lthn.control import NotAnswering
from lthn.ctl.context import (
    ANSWERING,
    CommandError,
    ask_all,
    load_config,
    print_json,
    print_table,
    processes_of,
)
from lthn.daemon_control import LEVELS
from lthn.exits import EXIT_CONFIG, EXIT_NOT_ANSWERING, EXIT_OK
from lthn.requests import SetLogLevel

NAME = "loglevel"
TIMEOUT = 2.0


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", help="daemon (" + ", ".join(ANSWERING) + ") or process")
    parser.add_argument("level", choices=LEVELS, help="new log level")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    program = args.program.split("_")[0] if args.program.startswith("authd_") else args.program
    if program not in ANSWERING:
        raise CommandError(EXIT_CONFIG, f'program: must be one of {", ".join(ANSWERING)} or '
                           f'a process such as authd_0 (got "{args.program}")')
    targets = [args.program] if program != args.program else processes_of(config, program)
    answers = ask_all(config, {p: (p, SetLogLevel(level=args.level)) for p in targets},
                      TIMEOUT)
    failed = {p: a for p, a in answers.items() if isinstance(a, Exception)}
    if failed:
        code = EXIT_NOT_ANSWERING if all(isinstance(a, NotAnswering)
                                         for a in failed.values()) else 1
        raise CommandError(code, "; ".join(str(a) for a in failed.values()))
    rows = [{"process": p, "previous": a.previous, "level": a.level}
            for p, a in sorted(answers.items())]
    if args.json:
        print_json({"processes": rows})
    else:
        print_table(["PROCESS", "PREVIOUS", "LEVEL"],
                    [[r["process"], r["previous"], r["level"]] for r in rows])
    return EXIT_OK
