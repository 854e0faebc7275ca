"""lthn-sessiond: session tracking, charging per tick and cutting (issue #4)."""

from __future__ import annotations

import gc

from lthn.daemon import run_daemon
from services.sessiond.sessiond import Sessiond


def main(argv: list[str] | None = None) -> int:
    gc.disable()   # collected between ticks instead (services/sessiond/collector.py)
    return run_daemon(Sessiond, argv, description="Charge sessions and cut them when "
                      "credit runs out.")


if __name__ == "__main__":
    raise SystemExit(main())
