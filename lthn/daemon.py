"""The one main loop every daemon runs: poll, dispatch, timers, signals.

A daemon subclasses `Daemon`, says which bus prefixes it wants, and supplies handlers.
Signal handlers only record; the loop acts: SIGTERM/SIGINT run the shutdown path,
SIGHUP the reload path (one code path each, whoever asks). They are recorded from the
first line of main() on (lthn.stop_signals), so one that arrives while the daemon starts
is acted on when its loop begins; the loop looks at it before it waits.

A ledger the daemon cannot write (disk full) is a state, not a crash: the daemon logs
`ledger <path>: not writable: disk full` once, keeps the reason in `ledger_problem`
(`lthnctl status` shows it), retries its work at its usual pace, and logs `writable
again` when a write succeeds (#14).
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
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.ledger import Ledger, LedgerError, LedgerNotWritable
from lthn.messages import Message, NodeHeartbeat
from lthn.node.orphans import die_with_supervisord
from lthn.ports import PortInUse
from lthn.stop_signals import StopSignals

log = logging.getLogger(__name__)


class Timers:
    """Repeating and one-shot timers on a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 failed: Callable[[Callable[[], Any], Exception], None] | None = None
                 ) -> None:
        self.clock = clock
        self.heap: list[tuple[float, int, float | None, Callable[[], Any]]] = []
        self.order = itertools.count()
        self.failed = failed or _log_failure

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
            except Exception as exc:
                # a failing periodic job is logged and retried at its next turn, never fatal
                self.failed(action, exc)


def _log_failure(action: Callable[[], Any], exc: Exception) -> None:
    log.error("timer %s failed", getattr(action, "__name__", action), exc_info=exc)


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
        self.timers = Timers(failed=self._timer_failed)
        self.timers.every(config.bus.heartbeat_interval, self.heartbeat, first=0.5)
        self.stopping = False
        self.pending_signal: int | None = None
        self.ledger_problem: str | None = None   # why the ledger cannot be written, if so
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
            try:
                batch = self.ledger.take_outbox()
            except LedgerNotWritable:
                return  # the messages wait in the outbox; the loop reports the ledger
            for msg in batch:
                self.publisher.publish(msg)
            if len(batch) < 1000:
                return

    def check_ledger(self) -> None:
        """Log the ledger's writability when it changes; keep it in `ledger_problem`."""
        problem = self.ledger.write_problem
        if problem == self.ledger_problem:
            return
        if problem:
            # writable -> NOT WRITABLE: payments and charges wait, nothing is lost
            log.error("ledger %s: not writable: %s; work that needs it waits and is "
                      "retried", self.config.ledger_path, problem)
        else:
            # NOT WRITABLE -> writable
            log.info("ledger %s: writable again", self.config.ledger_path)
        self.ledger_problem = problem

    def heartbeat(self) -> None:
        self.publish(NodeHeartbeat(daemon=self.control.process, pid=os.getpid()))

    # --- hooks for subclasses ---
    def start(self) -> None:
        """Called once before the loop: read state from the ledger, open sockets."""

    def on_message(self, env: Envelope) -> None:
        """A valid bus message arrived."""

    def reload(self) -> None:
        """SIGHUP (`lthn-node reload`, `lthnctl reload`): read the config file again and
        keep it (#15): the log level applies at once, what a daemon derived from the old
        config is rebuilt in `reloaded()`, and a change a reload cannot apply is named with
        the restart it needs (#19). A file with a mistake is logged and the running config
        stays."""
        new = self.control.reload_config()
        if new is None:
            return
        old, self.config = self.config, new
        self.reloaded(old)
        log.info("%s: config re-read from %s", self.name, new.source)

    def reloaded(self, old: Config) -> None:
        """After a reload: rebuild what was derived from the old config (`self.config` is
        the new one). Settings read where they are used need nothing here."""

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
            except LedgerNotWritable:
                pass  # reported once by check_ledger; the ledger stays the truth
            except Exception:
                # a handler bug on one message must not take the daemon down (issue #2)
                log.exception("%s: failed to handle %s from %s", self.name, env.topic,
                              env.sender)

    def _timer_failed(self, action: Callable[[], Any], exc: Exception) -> None:
        if not isinstance(exc, LedgerNotWritable):  # that one is check_ledger's to report
            _log_failure(action, exc)

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

    def run(self, early: StopSignals | None = None) -> int:
        """The loop, until SIGTERM/SIGINT; `early` holds a signal that came while the
        daemon was being built (run_daemon records them from its first line)."""
        for signum in StopSignals.SIGNALS:
            signal.signal(signum, self._record_signal)
        if early is not None and early.stop_asked:
            # (a SIGHUP while starting needs nothing: the config was read just now)
            log.info("%s: stopping before it started (%s)", self.name,
                     signal.Signals(early.pending or signal.SIGTERM).name)
            self._close()
            return EXIT_OK
        self.start()
        self.flush_outbox()
        log.info("%s: ready", self.name)
        try:
            while True:
                if self.pending_signal is not None:
                    self._apply_signal()
                if self.stopping:
                    break
                ready = self.wait(self.timers.ms_until_next(at_most=1000))
                for sock in ready:
                    self.handlers[sock]()
                self.timers.run_due()
                self.flush_outbox()
                self.check_ledger()
        finally:
            # stop intake first, then finish: a credit must not arrive with nowhere to go
            self.stop()
            self.flush_outbox()
            self._close()
        log.info("%s: stopped", self.name)
        return EXIT_OK

    def _close(self) -> None:
        self.control.close()
        if self.subscriber:
            self.subscriber.close()
        self.publisher.close()
        self.ledger.close()


def open_ledger(config: Config, signals: StopSignals,
                retry_seconds: float = 1.0) -> Ledger | None:
    """The ledger; while the disk refuses (full), wait for room rather than exit: a
    daemon that exits is restarted a few times by supervisord and then left FATAL, down
    for good after the disk is freed (#14). None when a stop came while waiting."""
    waiting = False
    while True:
        try:
            return Ledger.open(config.ledger_path)
        except LedgerNotWritable as exc:
            if not waiting:
                log.error("%s; waiting for room before starting", exc)
                waiting = True
        if signals.stop_asked:
            return None
        time.sleep(retry_seconds)  # the disk says nothing when it has room again


def run_daemon(cls: Callable[[Config, zmq.Context, Ledger], Daemon],
               argv: list[str] | None = None, description: str = "") -> int:
    early = StopSignals().install()   # from the first line: see lthn.stop_signals
    die_with_supervisord()            # no orphan when supervisord is killed (#14)
    _, config = parse_with_config(argparse.ArgumentParser(description=description), argv)
    try:
        ledger = open_ledger(config, early)
    except LedgerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if ledger is None:
        return EXIT_OK  # stopped while it waited
    ctx = zmq.Context()
    try:
        try:
            daemon = cls(config, ctx, ledger)
        except PortInUse as exc:
            # another program holds a port this config names: the operator's to fix
            ledger.close()
            print(f"Error: {config.source}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return daemon.run(early)
    finally:
        ctx.destroy(linger=1000)
