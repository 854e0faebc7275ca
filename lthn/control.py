"""Control endpoints: each daemon process answers requests (`lthn.requests`) on a ZeroMQ
ROUTER socket of its own; lthnctl asks with a DEALER socket and gives up after a deadline.

Endpoints are ipc sockets in the state dir's 0700 run/ directory, one per process:
`run/ctl-<process>.sock`, where the process is supervisord's name for it (`paymentd`,
`authd_0`, `authd_1`, ...). Only users who can enter run/ (the node's user, root) can
connect, so the unix user a request names is who ran lthnctl.

A ROUTER (not REP) socket: the daemon answers every request it reads, malformed ones with
an error reply, and a client that went away costs nothing (a REP socket stays stuck
waiting for a send after a failed receive).
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from lthn.bus import ensure_ipc_dir
from lthn.requests import CATALOGUE, MAX_BYTES, BadRequest, Reply, Request, build

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0


def endpoint_path(state_dir: Path, process: str) -> Path:
    return state_dir / "run" / f"ctl-{process}.sock"


def endpoint(state_dir: Path, process: str) -> str:
    return f"ipc://{endpoint_path(state_dir, process)}"


def process_name(daemon: str) -> str:
    """supervisord's name for this process (authd_0), or the daemon's name outside it."""
    return os.environ.get("SUPERVISOR_PROCESS_NAME") or daemon


def unix_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


# --- the daemon side ---

class Refused(Exception):
    """A request the daemon understood but will not carry out; the text says why (one
    line for the operator, e.g. `authid 1A00...: not in the ledger`)."""


@dataclass(frozen=True)
class Asked:
    """Who asked: `actor` is what audit lines record (`lthnctl:alice`)."""
    sender: str
    user: str

    @property
    def actor(self) -> str:
        return f"lthnctl:{self.user}"


Handler = Callable[[Any, Asked], Reply]


class ControlServer:
    """Reads requests, calls the handler declared for each, sends the reply."""

    def __init__(self, ctx: zmq.Context, state_dir: Path, process: str) -> None:
        self.path = endpoint_path(state_dir, process)
        address = f"ipc://{self.path}"
        ensure_ipc_dir(address)
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_BYTES)
        # a stale socket file (a killed process) is taken over by bind
        self.socket.bind(address)
        self.handlers: dict[type[Request], Handler] = {}

    def answer(self, cls: type[Request], handler: Handler) -> None:
        self.handlers[cls] = handler

    def drain(self) -> None:
        """Answer every request waiting now (never raises for a bad request)."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue   # no envelope: nobody to answer
            envelope, body = frames[:-1], frames[-1]
            reply = self.handle(body)
            try:
                self.socket.send_multipart([*envelope, reply], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.debug("control: reply not sent (%s)", exc)

    def handle(self, body: bytes) -> bytes:
        try:
            cls, req, asked = decode_request(body)
        except BadRequest as exc:
            log.warning("control: refused a request: %s", exc)
            return error_reply("malformed" if "unknown request" not in str(exc)
                               else "unknown", str(exc))
        handler = self.handlers.get(cls)
        if handler is None:
            return error_reply("unknown", f"{cls.name}: not answered by this daemon")
        try:
            answer = handler(req, asked)
        except Refused as exc:
            log.info("control: %s from %s refused: %s", cls.name, asked.actor, exc)
            return error_reply("refused", str(exc))
        except Exception as exc:
            # a handler bug must not take the daemon down; the caller learns it failed
            log.exception("control: %s from %s failed", cls.name, asked.actor)
            return error_reply("failed", f"{cls.name} failed: {type(exc).__name__}: {exc}")
        if not isinstance(answer, cls.reply):
            log.error("control: %s handler returned %s", cls.name, type(answer).__name__)
            return error_reply("failed", f"{cls.name}: the daemon built a wrong reply")
        return msgpack.packb({"ok": True, "v": answer.version, "data": answer.fields()},
                             use_bin_type=True)

    def close(self) -> None:
        self.socket.close(0)
        try:
            self.path.unlink()
        except OSError:
            pass


def error_reply(code: str, text: str) -> bytes:
    return msgpack.packb({"ok": False, "code": code, "error": text[:500]}, use_bin_type=True)


def decode_request(body: bytes) -> tuple[type[Request], Request, Asked]:
    if len(body) > MAX_BYTES:
        raise BadRequest(f"request of {len(body)} bytes is over {MAX_BYTES}")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadRequest(f"request is not msgpack ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise BadRequest("request is not a map")
    name, sender, user = raw.get("req"), raw.get("sender"), raw.get("user")
    if not all(isinstance(v, str) for v in (name, sender, user)):
        raise BadRequest("request needs req, sender and user strings")
    cls = CATALOGUE.get(name)
    if cls is None:
        raise BadRequest(f"unknown request {name[:60]!r} from {sender[:60]}")
    if raw.get("v") != cls.version:
        raise BadRequest(f"{name} from {sender[:60]}: version {raw.get('v')!r}, "
                         f"this daemon answers v{cls.version}")
    try:
        req = build(cls, raw.get("data"))
    except BadRequest as exc:
        raise BadRequest(f"{name} from {sender[:60]}: {exc}") from None
    return cls, req, Asked(sender=sender[:100], user=user[:64])


# --- the lthnctl side ---

class NotAnswering(Exception):
    """The process is not there or did not answer in time; the text says which."""


class RequestFailed(Exception):
    """The daemon answered with an error; `code` is its kind (refused, failed, ...)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


def listening(path: Path) -> str | None:
    """None when something accepts connections on the unix socket `path`, else why not.
    Instant, so a stopped daemon is reported at once instead of after a timeout."""
    if not path.exists():
        return "no control socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return "nothing listens on its control socket"
        return f"control socket: {exc.strerror or exc}"
    finally:
        probe.close()
    return None


def ask(ctx: zmq.Context, state_dir: Path, process: str, req: Request,
        timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Send one request to `process` and return its decoded reply; raises NotAnswering
    (down, or no answer within `timeout`) or RequestFailed (an error reply)."""
    result = ask_many(ctx, state_dir, {process: (process, req)}, timeout)[process]
    if isinstance(result, Exception):
        raise result
    return result


def ask_many(ctx: zmq.Context, state_dir: Path, asks: dict[str, tuple[str, Request]],
             timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Several requests at once, one deadline for all: asks is {key: (process, request)};
    returns {key: the decoded reply, or the NotAnswering / RequestFailed exception}.
    Never raises for one process."""
    results: dict[str, Any] = {}
    waiting: dict[zmq.Socket, tuple[str, str, Request]] = {}
    poller = zmq.Poller()
    try:
        for key, (process, req) in asks.items():
            path = endpoint_path(state_dir, process)
            why = listening(path)
            if why:
                results[key] = NotAnswering(f"{process} is not answering ({why}: {path})")
                continue
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_BYTES)
            sock.connect(f"ipc://{path}")
            body = {"req": req.name, "v": req.version, "sender": f"lthnctl.{os.getpid()}",
                    "user": unix_user(), "data": req.fields()}
            sock.send_multipart([b"", msgpack.packb(body, use_bin_type=True)])
            waiting[sock] = (key, process, req)
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(int(left * 1000) + 1):
                key, process, req = waiting.pop(sock)
                poller.unregister(sock)
                frames = sock.recv_multipart()
                sock.close(0)
                try:
                    if len(frames) != 2 or frames[0] != b"":
                        raise RequestFailed("malformed", f"{req.name}: reply without envelope")
                    results[key] = decode_reply(req, frames[1])
                except RequestFailed as exc:
                    results[key] = exc
        for key, process, req in waiting.values():
            results[key] = NotAnswering(f"{process} did not answer {req.name} within "
                                        f"{timeout:g} s")
    finally:
        for sock in waiting:
            sock.close(0)
    return results


def decode_reply(req: Request, body: bytes) -> Any:
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RequestFailed("malformed", f"{req.name}: reply is not msgpack "
                            f"({type(exc).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("ok"), bool):
        raise RequestFailed("malformed", f"{req.name}: reply is not a reply map")
    if not raw["ok"]:
        code, text = raw.get("code"), raw.get("error")
        raise RequestFailed(code if isinstance(code, str) else "failed",
                            text if isinstance(text, str) else f"{req.name} failed")
    if raw.get("v") != req.reply.version:
        raise RequestFailed("malformed", f"{req.name}: reply version {raw.get('v')!r}, "
                            f"expected {req.reply.version}")
    try:
        return build(req.reply, raw.get("data"))
    except BadRequest as exc:
        raise RequestFailed("malformed", f"{req.name}: reply {exc}") from None
