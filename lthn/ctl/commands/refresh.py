"""Do now what the timers would do soon: paymentd polls the wallet, sessiond reconciles
sessions and charges, every authd process resyncs haproxy's map with the ledger.

Exit 0 when all answered, 3 when one is not answering (the others still refresh).
--json keys: processes[] (process, ok, detail).
"""

from __future__ import annotations

import argparse

from lthn.control import NotAnswering
from lthn.ctl.context import ask_all, load_config, print_json, print_table, processes_of
from lthn.exits import EXIT_FAILED, EXIT_NOT_ANSWERING, EXIT_OK
from lthn.requests import Refresh

NAME = "refresh"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    targets = ["paymentd", "sessiond", *processes_of(config, "authd")]
    # a wallet call may take its whole timeout
    answers = ask_all(config, {p: (p, Refresh()) for p in targets},
                      timeout=config.wallet.timeout + 3)
    rows = [{"process": p, "ok": not isinstance(a, Exception),
             "detail": str(a) if isinstance(a, Exception) else a.detail}
            for p, a in answers.items()]
    if args.json:
        print_json({"processes": rows})
    else:
        print_table(["PROCESS", "DONE", "DETAIL"],
                    [[r["process"], "yes" if r["ok"] else "NO", r["detail"]] for r in rows])
    failed = [a for a in answers.values() if isinstance(a, Exception)]
    if not failed:
        return EXIT_OK
    return EXIT_NOT_ANSWERING if all(isinstance(a, NotAnswering) for a in failed) \
        else EXIT_FAILED
