"""sessiond collects cyclic garbage between ticks (services/sessiond/collector.py, #16)."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

from services.sessiond.collector import TickCollector


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None


@pytest.fixture
def no_automatic_gc():
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()


def old_cycle() -> weakref.ref:
    """A reference cycle that has survived a collection (in the oldest generation),
    then dropped: only a full collection frees it."""
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    gc.collect()
    return weakref.ref(a)


def test_old_garbage_waits_for_the_full_collection_every_n_ticks(no_automatic_gc, caplog):
    collector = TickCollector(full_every=3)
    alive = old_cycle()
    with caplog.at_level(logging.DEBUG, logger="services.sessiond.collector"):
        collector.after_tick()
        collector.after_tick()
        assert alive() is not None          # young collections leave it
        assert "garbage collected" not in caplog.text
        collector.after_tick()
    assert alive() is None
    assert "garbage collected: " in caplog.text


def test_young_garbage_goes_after_the_tick_that_made_it(no_automatic_gc):
    collector = TickCollector(full_every=1000)
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    alive = weakref.ref(a)
    del a, b
    collector.after_tick()
    assert alive() is None
