"""supervisord as `lthn-node run` starts it: supervisor's own main, with one change so a
full disk cannot kill it (#14).

supervisor's log handlers catch a failed write (ENOSPC on a full disk) and print its
traceback to stderr; when stderr is a file on that same full disk (the demo's node.out,
`lthn-node run > node.out`), that print fails too, the exception escapes the handler and
supervisord dies, leaving every program without a supervisor. Here the traceback is
printed when stderr can take it and dropped when it cannot: the log line is lost either
way, supervisord lives on and logs again once there is space. (supervisord.conf sets
`silent`, so it logs only to its own rotated logfile, never to stdout.)

    python -m lthn.node.supervisord_main -n -c supervisord.conf
"""

from __future__ import annotations

import sys

from supervisor import loggers
from supervisor.supervisord import main

_print_traceback = loggers.Handler.handleError


def _handle_error(self: loggers.Handler) -> None:
    try:
        _print_traceback(self)
    except OSError:
        pass  # stderr cannot take it either (disk full, closed): the line is lost


loggers.Handler.handleError = _handle_error  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
