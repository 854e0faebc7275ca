"""Shared fixtures live in tests/fixtures/, one module per real part they start."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.regtest",
    "tests.fixtures.node",
    "tests.fixtures.proxy",
]
