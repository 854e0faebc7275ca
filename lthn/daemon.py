"""The one main loop every daemon runs: poll, dispatch, timers, signals.

A daemon subclasses `Daemon`, says which bus prefixes it wants, and supplies handlers.
Signal handlers only record; the loop acts: SIGTERM/SIGINT run the shutdown path,
SIGHUP the reload path (one code path each, whoever asks).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from lthn.bus import Envelope, Publisher, Subscriber
from lthn.cli_args import parse_with_config
from lthn.config import Config
from lthn.daemon_control import DaemonControl
from lthn.exits import EXIT_FAILED, EXIT_OK
from lthn.ledger import Ledger, LedgerError
from lthn.messages import Message, NodeHeartbeat

log = logging.getLogger(__name__)


class Timers:
    """Repeating and one-shot timers on a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.heap: list[tuple[float, int, float | None, Callable[[], Any]]] = []
        self.order = itertools.count()

    def every(self, seconds: float, action: Callable[[], Any], first: float = 0.0) -> None:
        heapq.heappush(self.heap, (self.clock() + first, next(self.order), seconds, action))

    def after(self, seconds: float, action: Callable[[], Any]) -> None:
        heapq.heappush(self.heap, (self.clock() + seconds, next(self.order), None, action))

    def ms_until_next(self, at_most: int) -> int:
        if not self.heap:
            return at_most
        return max(0, min(at_most, int((self.heap[0][0] - self.clock()) * 1000) + 1))

    def run_due(self) -> None:
        now = self.clock()
        while self.heap and self.heap[0][0] <= now:
            _, order, period, action = heapq.heappop(self.heap)
            if period is not None:
                heapq.heappush(self.heap, (now + period, order, period, action))
            try:
                action()
            except Exception:
                # a failing periodic job is logged and retried at its next turn, never fatal
                log.exception("timer %s failed", getattr(action, "__name__", action))


class Daemon:
    """Base of every daemon: owns the loop; subclasses add handlers and timers."""

    name = "daemon"
    prefixes: list[str] = []

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        self.config = config
        self.ctx = ctx
        self.ledger = ledger
        self.sender = f"{self.name}.{os.getpid()}"
        self.publisher = Publisher(ctx, config.publish_endpoint, self.sender)
        self.subscriber = Subscriber(ctx, config.subscribe_endpoint, self.prefixes,
                                     config.bus.max_message_bytes) if self.prefixes else None
        self.poller = zmq.Poller()
        self.handlers: dict[Any, Callable[[], None]] = {}
        if self.subscriber:
            self.watch(self.subscriber.socket, self._on_bus)
        self.timers = Timers()
        self.timers.every(config.bus.heartbeat_interval, self.heartbeat, first=0.5)
        self.stopping = False
        self.pending_signal: int | None = None
        # request/reply beside pub/sub: lthnctl's questions and manual changes (#19)
        self.control = DaemonControl(self)
        self.watch(self.control.server.socket, self.control.server.drain)

    # --- wiring ---
    def watch(self, sock: Any, handler: Callable[[], None]) -> None:
        """Call handler when a zmq socket or a file descriptor is readable."""
        self.poller.register(sock, zmq.POLLIN)
        self.handlers[sock] = handler

    def unwatch(self, sock: Any) -> None:
        self.poller.unregister(sock)
        self.handlers.pop(sock, None)

    def publish(self, msg: Message) -> None:
        self.publisher.publish(msg)

    def flush_outbox(self) -> None:
        """Publish what committed transactions queued (at-least-once after a crash)."""
        while True:
            batch = self.ledger.take_outbox()
            for msg in batch:
                self.publisher.publish(msg)
            if len(batch) < 1000:
                return

    def heartbeat(self) -> None:
        self.publish(NodeHeartbeat(daemon=self.control.process, pid=os.getpid()))

    # --- hooks for subclasses ---
    def start(self) -> None:
        """Called once before the loop: read state from the ledger, open sockets."""

    def on_message(self, env: Envelope) -> None:
        """A valid bus message arrived."""

    def reload(self) -> None:
        """SIGHUP: re-read the config and apply what can change without a restart (the
        log level); say what else changed and needs one (#19)."""
        self.control.reload_config()

    def stop(self) -> None:
        """Called once after the loop, before the bus and ledger close."""

    def status_details(self) -> dict[str, Any]:
        """What `lthnctl status` shows for this daemon beside name, pid and uptime."""
        return {}

    def refresh(self) -> str:
        """`lthnctl refresh`: do now what a timer would do soon; returns what was done."""
        return "nothing to refresh"

    # --- the loop ---
    def _on_bus(self) -> None:
        assert self.subscriber is not None
        for env in self.subscriber.drain():
            try:
                self.on_message(env)
            except Exception:
                # a handler bug on one message must not take the daemon down (issue #2)
                log.exception("%s: failed to handle %s from %s", self.name, env.topic,
                              env.sender)

    def _record_signal(self, signum: int, _frame: Any) -> None:
        self.pending_signal = signum

    def _apply_signal(self) -> None:
        signum, self.pending_signal = self.pending_signal, None
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("%s: stopping (%s)", self.name, signal.Signals(signum).name)
            self.stopping = True
        elif signum == signal.SIGHUP:
            self.reload()

    def wait(self, timeout_ms: int) -> dict[Any, int]:
        """Readable sockets, waiting at most timeout_ms (signals are seen within it)."""
        if not self.handlers:
            # zmq_poll on no sockets returns at once: without this a daemon that watches
            # nothing (paymentd) spun at 100% CPU between its timers
            time.sleep(timeout_ms / 1000)
            return {}
        return dict(self.poller.poll(timeout_ms))

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        self.start()
        self.flush_outbox()
        log.info("%s: ready", self.name)
        try:
            while not self.stopping:
                ready = self.wait(self.timers.ms_until_next(at_most=1000))
                for sock in ready:
                    self.handlers[sock]()
                self.timers.run_due()
                self.flush_outbox()
                if self.pending_signal is not None:
                    self._apply_signal()
        finally:
            # stop intake first, then finish: a credit must not arrive with nowhere to go
            self.stop()
            self.flush_outbox()
            self.control.close()
            if self.subscriber:
                self.subscriber.close()
            self.publisher.close()
            self.ledger.close()
        log.info("%s: stopped", self.name)
        return EXIT_OK


def run_daemon(cls: Callable[[Config, zmq.Context, Ledger], Daemon],
               argv: list[str] | None = None, description: str = "") -> int:
    _, config = parse_with_config(argparse.ArgumentParser(description=description), argv)
    try:
        ledger = Ledger.open(config.ledger_path)
    except LedgerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    ctx = zmq.Context()
    try:
        return cls(config, ctx, ledger).run()
    finally:
        ctx.destroy(linger=1000)
