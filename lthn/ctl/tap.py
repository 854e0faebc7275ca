"""lthn-tap: the bus debug subscriber. Prints every message (or those under prefixes)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import zmq

from lthn.bus import Subscriber
from lthn.cli_args import config_argument, load_config_or_exit
from lthn.messages import CATALOGUE
from lthn.stop_signals import StopSignals

RECEIVE_MS = 500


def main(argv: list[str] | None = None) -> int:
    # recorded from the first line, whatever the inherited disposition: started as a
    # background job SIGINT is ignored, and a tap once ignored a test's SIGINT for an
    # hour (#14); the loop below looks at it at least twice a second. SIGHUP (a closed
    # terminal) keeps its default: it ends the tap at once
    signals = StopSignals().install((signal.SIGTERM, signal.SIGINT))
    parser = argparse.ArgumentParser(
        description="Watch the node's bus. PREFIX filters topics, e.g. `payment.`.")
    config_argument(parser)
    parser.add_argument("prefixes", nargs="*", metavar="PREFIX", default=[""])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--catalogue", action="store_true",
                        help="list every message type with its fields, then exit")
    parser.add_argument("--count", type=int, default=0, help="exit after N messages")
    args = parser.parse_args(argv)
    if args.catalogue:
        for topic, cls in sorted(CATALOGUE.items()):
            fields = ", ".join(f"{n}: {t}" for n, t in cls.__annotations__.items())
            print(f"{topic} v{cls.version}  ({fields})\n    {cls.__doc__}")
        return 0
    config = load_config_or_exit(args.config)
    ctx = zmq.Context()
    sub = Subscriber(ctx, config.subscribe_endpoint, args.prefixes,
                     config.bus.max_message_bytes)
    seen = 0
    try:
        while (not args.count or seen < args.count) and not signals.stop_asked:
            env = sub.receive(timeout_ms=RECEIVE_MS)
            if env is None:
                continue
            seen += 1
            fields = env.message.fields()
            if args.json:
                print(json.dumps({"topic": env.topic, "sender": env.sender, "seq": env.seq,
                                  "ts": env.ts, "data": fields}), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(env.ts))
                pairs = " ".join(f"{k}={v}" for k, v in fields.items())
                print(f"{stamp} {env.topic} [{env.sender}#{env.seq}] {pairs}", flush=True)
    except BrokenPipeError:
        sys.stderr.close()
    finally:
        sub.close()
        ctx.destroy(linger=0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
