"""Shared fixtures live in tests/fixtures/, one module per real part they start.

The suite uses the real programs; a missing one fails the run at once with what to do
(never a skip that hides it, issue #13).
"""

from __future__ import annotations

import shutil

import pytest

from lthn.node.programs import PROGRAMS

REAL_PARTS = sorted({p.binary for p in PROGRAMS if p.binary}
                    | {"monerod", "monero-wallet-rpc", "openssl", "nft", "ping"})


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [name for name in REAL_PARTS if shutil.which(name) is None]
    if missing:
        pytest.exit(f"missing programs the tests run for real: {', '.join(missing)} "
                    "(run ./scripts/setup, which installs them)", returncode=1)

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.regtest",
    "tests.fixtures.node",
    "tests.fixtures.payment_node",
    "tests.fixtures.proxy",
    "tests.fixtures.vpn",
    "tests.fixtures.faults",
    "tests.fixtures.firewall",
]
