"""ZeroMQ pub/sub bus with msgpack bodies, through an XSUB/XPUB forwarder (lthn-busd).

Publishers connect a PUB socket to the forwarder's publish endpoint; subscribers connect
a SUB socket to its subscribe endpoint. Pub/sub loses messages to late joiners by design:
a daemon that (re)starts reads current state from the ledger, never from replays.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from lthn.messages import CATALOGUE, BadMessage, Message, build

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Envelope:
    """A received message with who sent it, their sequence number and send time."""
    message: Message
    sender: str
    seq: int
    ts: float

    @property
    def topic(self) -> str:
        return self.message.topic


def ensure_ipc_dir(endpoint: str) -> None:
    """ipc:// sockets live in a 0700 directory so other local users cannot use the bus."""
    if endpoint.startswith("ipc://"):
        directory = Path(endpoint[len("ipc://"):]).parent
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)


def encode(msg: Message, sender: str, seq: int, now: float) -> list[bytes]:
    body = {"v": msg.version, "sender": sender, "seq": seq, "ts": now, "data": msg.fields()}
    return [msg.topic.encode(), msgpack.packb(body, use_bin_type=True)]


def decode(frames: list[bytes], max_bytes: int) -> Envelope:
    """Frames -> Envelope, or BadMessage saying what is wrong (and who sent it, if known)."""
    if len(frames) != 2:
        raise BadMessage(f"expected 2 frames, got {len(frames)}")
    topic_raw, body_raw = frames
    if len(body_raw) > max_bytes:
        raise BadMessage(f"body of {len(body_raw)} bytes is over the {max_bytes} byte limit")
    try:
        topic = topic_raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadMessage("topic is not ASCII") from None
    try:
        body = msgpack.unpackb(body_raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadMessage(f"body is not msgpack ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise BadMessage("body is not a map")
    sender = body.get("sender")
    sender = sender if isinstance(sender, str) else "?"
    cls = CATALOGUE.get(topic)
    if cls is None:
        raise BadMessage(f"unknown topic {topic[:60]!r} from {sender}")
    if body.get("v") != cls.version:
        raise BadMessage(f"{topic} from {sender}: version {body.get('v')!r}, "
                         f"expected {cls.version}")
    seq, ts = body.get("seq"), body.get("ts")
    if not isinstance(seq, int) or not isinstance(ts, int | float):
        raise BadMessage(f"{topic} from {sender}: seq or ts missing")
    try:
        msg = build(cls, body.get("data"))
    except BadMessage as exc:
        raise BadMessage(f"{topic} from {sender}: {exc}") from None
    return Envelope(msg, sender, seq, float(ts))


def connect_and_wait(sock: zmq.Socket, endpoint: str, timeout: float) -> bool:
    """Connect and wait (bounded) for the handshake with the forwarder, plus a moment for
    the subscription that travels right behind it (zmq applies it within microseconds;
    20 ms is a wide margin). False when the forwarder did not answer in time: the socket
    stays connecting and catches up by itself."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(endpoint)
        if not monitor.poll(int(timeout * 1000)):
            log.warning("bus: %s not reachable yet; going on without it", endpoint)
            return False
        monitor.recv_multipart()
    finally:
        sock.disable_monitor()
        monitor.close(0)
    time.sleep(0.02)
    return True


class Publisher:
    """Publishes catalogue messages with a per-sender sequence number."""

    def __init__(self, ctx: zmq.Context, endpoint: str, sender: str,
                 connect_timeout: float = 2.0) -> None:
        ensure_ipc_dir(endpoint)
        self.sender = sender
        self.socket = ctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        # a PUB socket drops what it sends before it knows of a subscriber; the forwarder
        # subscribes to everything the moment a publisher connects, so once connected a
        # daemon's first messages are not lost
        self.connected = connect_and_wait(self.socket, endpoint, connect_timeout)
        self.seq = itertools.count(1)

    def publish(self, msg: Message) -> None:
        self.socket.send_multipart(encode(msg, self.sender, next(self.seq), time.time()))

    def close(self) -> None:
        self.socket.close()


class Subscriber:
    """Receives and checks messages; bad ones are logged and dropped, never raised."""

    def __init__(self, ctx: zmq.Context, endpoint: str, prefixes: list[str],
                 max_bytes: int = 65536, connect_timeout: float = 2.0) -> None:
        ensure_ipc_dir(endpoint)
        self.max_bytes = max_bytes
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 100_000)
        # no ZMQ_MAXMSGSIZE here: zmq would disconnect the forwarder on one big message and
        # lose everything queued behind it; decode() drops oversized bodies instead
        for prefix in prefixes:
            self.socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        # connected (subscription delivered) when this returns, so nothing published after
        # the constructor is missed for want of a connection
        self.connected = connect_and_wait(self.socket, endpoint, connect_timeout)
        self.dropped = 0

    def receive(self, timeout_ms: int | None = None) -> Envelope | None:
        """One message, or None when nothing valid arrived (bad ones are logged)."""
        if timeout_ms is not None and not self.socket.poll(timeout_ms):
            return None
        frames = self.socket.recv_multipart()
        try:
            return decode(frames, self.max_bytes)
        except BadMessage as exc:
            self.dropped += 1
            log.warning("bus: dropped a message: %s", exc)
            return None

    def drain(self) -> list[Envelope]:
        """Every message waiting now, without blocking."""
        out = []
        while self.socket.poll(0):
            env = self.receive()
            if env is not None:
                out.append(env)
        return out

    def close(self) -> None:
        self.socket.close()


def run_forwarder(ctx: zmq.Context, publish_endpoint: str, subscribe_endpoint: str) -> None:
    """Bind XSUB (publishers connect) and XPUB (subscribers connect) and relay forever."""
    for ep in (publish_endpoint, subscribe_endpoint):
        ensure_ipc_dir(ep)
        if ep.startswith("ipc://") and os.path.exists(ep[6:]):
            os.unlink(ep[6:])  # a stale socket file from a killed forwarder
    # closed whatever happens, also when the context is terminated (a stop) while binding:
    # a socket left open would keep ctx.term() waiting for ever
    sockets: list[zmq.Socket] = []
    try:
        xsub = ctx.socket(zmq.XSUB)
        sockets.append(xsub)
        xpub = ctx.socket(zmq.XPUB)
        sockets.append(xpub)
        xsub.bind(publish_endpoint)
        # subscribe to everything upstream: publishers then send from their first message
        # on, whether or not a subscriber has asked yet (subscribers still filter)
        xsub.send(b"\x01")
        xpub.setsockopt(zmq.SNDHWM, 200_000)
        xpub.bind(subscribe_endpoint)
        log.info("bus: forwarding %s -> %s", publish_endpoint, subscribe_endpoint)
        zmq.proxy(xsub, xpub)
    except zmq.ContextTerminated:
        pass
    finally:
        for sock in sockets:
            sock.close(0)
