"""lthn-busd: the bus forwarder (XSUB <- publishers, XPUB -> subscribers)."""

from __future__ import annotations

import argparse
import signal
import threading

import zmq

from lthn.bus import run_forwarder
from lthn.cli_args import parse_with_config


def main(argv: list[str] | None = None) -> int:
    _, config = parse_with_config(
        argparse.ArgumentParser(description="Run the node's message bus forwarder."), argv)
    ctx = zmq.Context()
    # zmq.proxy blocks; SIGTERM terminates the context from the main thread, which ends it
    worker = threading.Thread(target=run_forwarder, args=(
        ctx, config.publish_endpoint, config.subscribe_endpoint), daemon=True)
    worker.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5) and worker.is_alive():
        pass
    failed = not stop.is_set()  # the forwarder thread ended by itself: it could not bind
    # term() makes zmq.proxy raise ContextTerminated in the worker, which closes its own
    # sockets (closing them from here would pull them from under a running proxy)
    ctx.term()
    worker.join(timeout=2)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
