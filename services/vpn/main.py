"""lthn-vpnd: OpenVPN's management connection, logins, live clients and cuts (issue #18)."""

from __future__ import annotations

from lthn.daemon import run_daemon
from services.vpn.vpnd import Vpnd


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Vpnd, argv, description="Hold OpenVPN's management connection: answer "
                      "logins from the ledger, report live clients, cut them when asked.")


if __name__ == "__main__":
    raise SystemExit(main())
