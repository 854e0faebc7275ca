"""New blocks as the coin daemon publishes them: monerod's ZMQ `chain_main` (issue #16).

monerod started with `--zmq-pub tcp://IP:PORT` (and without `--no-zmq`, which turns the
publisher off too, measured) sends one frame per new block on the main chain:

    json-minimal-chain_main:{"first_height":N,"first_prev_id":"..","ids":["..", ...]}

It arrives with the block (measured on regtest: as `generateblocks` returns), where a
wallet refresh every few seconds would see it late. A socket monitor says whether the
publisher is connected, so paymentd refreshes on a timer whenever it is not: a wrong or
dead endpoint slows confirmations down, it never stops them.
"""

from __future__ import annotations

import json
import logging

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

TOPIC = b"json-minimal-chain_main"
# one block is ~200 bytes; a reorg names every replaced block: far below this
MAX_FRAME = 1 << 20
LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


def parse_chain_main(frame: bytes) -> int | None:
    """The height of the new top block, or None when the frame is not a chain_main we
    understand (the caller refreshes anyway: it only ever costs one refresh)."""
    topic, sep, body = frame.partition(b":")
    if topic != TOPIC or not sep:
        return None
    try:
        data = json.loads(body)
        first, ids = data["first_height"], data["ids"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(first, int) or isinstance(first, bool) or first < 0 \
            or not isinstance(ids, list) or not ids:
        return None
    return first + len(ids) - 1


class DaemonBlocks:
    """A SUB socket on the daemon's publisher, plus the monitor telling whether it is
    connected. Both are plain zmq sockets for the daemon loop to poll."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        self.socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
        self.monitor = self.socket.get_monitor_socket(LINK_EVENTS)
        self.socket.connect(endpoint)
        self.connected = False

    def drain(self) -> list[int | None]:
        """Every chain_main frame waiting now, as top heights (None: not understood)."""
        out: list[int | None] = []
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            height = parse_chain_main(frames[0])
            if height is None:
                log.warning("daemon ZMQ %s: a chain_main frame not understood (%r); "
                            "refreshing anyway", self.endpoint, frames[0][:80])
            out.append(height)
        return out

    def link_changes(self) -> list[bool]:
        """Connection changes waiting now: True connected, False disconnected."""
        out = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                out.append(True)
            elif event == zmq.EVENT_DISCONNECTED:
                out.append(False)
        if out:
            self.connected = out[-1]
        return out

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(0)
        self.socket.close(0)
