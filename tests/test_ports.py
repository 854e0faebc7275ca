"""Loopback ports for tests and the demo (lthn/ports.py)."""

from __future__ import annotations

from lthn.ports import ephemeral_range, free_port_pair, port_is_free


def test_free_port_pair_is_outside_the_kernels_own_range():
    """Regression: a pair next to a kernel-picked port collided with outgoing connections
    under load ("no two adjacent free ports" after 50 tries)."""
    low, _high = ephemeral_range()
    for _ in range(20):
        port = free_port_pair()
        assert 1024 <= port and port + 1 < low
        assert port_is_free(port) and port_is_free(port + 1)
