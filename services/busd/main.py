"""lthn-busd: the bus forwarder (XSUB <- publishers, XPUB -> subscribers)."""

from __future__ import annotations

import argparse
import signal
import threading

import zmq

from lthn.bus import run_forwarder
from lthn.cli_args import parse_with_config
from lthn.node.orphans import die_with_supervisord
from lthn.stop_signals import StopSignals


def main(argv: list[str] | None = None) -> int:
    # from the first line, whatever SIGINT's inherited disposition (a background job's
    # is "ignored"), and busd dies with its supervisord (#14)
    signals = StopSignals().install((signal.SIGTERM, signal.SIGINT))
    # a reload has nothing for the forwarder to re-read (`lthn-node reload` skips it, #15)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_supervisord()
    _, config = parse_with_config(
        argparse.ArgumentParser(description="Run the node's message bus forwarder."), argv)
    ctx = zmq.Context()
    # zmq.proxy blocks; SIGTERM terminates the context from the main thread, which ends it
    worker = threading.Thread(target=run_forwarder, args=(
        ctx, config.publish_endpoint, config.subscribe_endpoint), daemon=True)
    worker.start()
    # the handlers only record (no lock taken in a handler): looked at twice a second
    while not signals.stop_asked and worker.is_alive():
        worker.join(0.5)
    failed = not signals.stop_asked  # the forwarder ended by itself: it could not bind
    # term() makes zmq.proxy raise ContextTerminated in the worker, which closes its own
    # sockets (closing them from here would pull them from under a running proxy)
    ctx.term()
    worker.join(timeout=2)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
