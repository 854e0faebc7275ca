"""Control endpoints (issue #19): strict decoding both ways, an error reply for anything
malformed (never a crash), and a clear, fast NotAnswering when nobody is there."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from lthn import control
from lthn.control import Asked, ControlServer, NotAnswering, Refused, RequestFailed
from lthn.requests import (
    CATALOGUE,
    AddBan,
    DaemonInfo,
    DaemonStatus,
    Done,
    Refresh,
    SetLogLevel,
    build,
)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class Served:
    """A ControlServer answered by a thread, as the daemon loop would."""

    def __init__(self, ctx: zmq.Context, state: Path) -> None:
        self.server = ControlServer(ctx, state, "testd")
        self.stop = threading.Event()
        self.asked: list[Asked] = []
        self.server.answer(DaemonStatus, self.status)
        self.server.answer(Refresh, self.refresh)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def status(self, _req: DaemonStatus, asked: Asked) -> DaemonInfo:
        self.asked.append(asked)
        return DaemonInfo(daemon="testd", process="testd", pid=1, software="0",
                          started=0.0, details={"x": 1})

    def refresh(self, _req: Refresh, _asked: Asked) -> Done:
        raise Refused("nothing here to refresh")

    def loop(self) -> None:
        while not self.stop.is_set():
            if self.server.socket.poll(50):
                self.server.drain()
        self.server.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def served(ctx, tmp_path):
    s = Served(ctx, tmp_path)
    yield s
    s.close()


def raw_ask(ctx: zmq.Context, path: Path, body: bytes) -> dict:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{path}")
    sock.send_multipart([b"", body])
    assert sock.poll(3000), "no reply"
    frames = sock.recv_multipart()
    sock.close(0)
    return msgpack.unpackb(frames[1], raw=False)


def test_a_request_is_answered_and_names_the_unix_user(ctx, tmp_path, served):
    reply = control.ask(ctx, tmp_path, "testd", DaemonStatus())
    assert isinstance(reply, DaemonInfo) and reply.details == {"x": 1}
    assert served.asked[0].user == control.unix_user()
    assert served.asked[0].actor == f"lthnctl:{control.unix_user()}"


def test_a_refusal_comes_back_as_its_one_line(ctx, tmp_path, served):
    with pytest.raises(RequestFailed, match="nothing here to refresh") as info:
        control.ask(ctx, tmp_path, "testd", Refresh())
    assert info.value.code == "refused"


def test_a_request_the_daemon_does_not_answer_is_an_error_reply(ctx, tmp_path, served):
    with pytest.raises(RequestFailed, match="not answered by this daemon"):
        control.ask(ctx, tmp_path, "testd", SetLogLevel(level="info"))


# expect: each body gets an error reply whose text names the problem
@pytest.mark.parametrize("body, code, words", ids=[
    "garbage", "list", "no sender", "unknown", "version", "extra field", "missing field",
    "wrong type"], argvalues=[
    (b"\xc1garbage", "malformed", "not msgpack"),
    (msgpack.packb([1, 2]), "malformed", "not a map"),
    (msgpack.packb({"req": "daemon.status", "v": 1, "data": {}}), "malformed",
     "req, sender and user"),
    (msgpack.packb({"req": "no.such", "v": 1, "sender": "t", "user": "u", "data": {}}),
     "unknown", "unknown request"),
    (msgpack.packb({"req": "daemon.status", "v": 9, "sender": "t", "user": "u", "data": {}}),
     "malformed", "version 9"),
    (msgpack.packb({"req": "daemon.status", "v": 1, "sender": "t", "user": "u",
                    "data": {"extra": 1}}), "malformed", "unknown field extra"),
    (msgpack.packb({"req": "ban.add", "v": 1, "sender": "t", "user": "u",
                    "data": {"address": "1.2.3.4", "reason": "x"}}), "malformed",
     "missing field seconds"),
    (msgpack.packb({"req": "ban.add", "v": 1, "sender": "t", "user": "u",
                    "data": {"address": "1.2.3.4", "seconds": "soon", "reason": "x"}}),
     "malformed", "field seconds must be float"),
])
def test_malformed_requests_get_an_error_reply_and_the_server_goes_on(
        ctx, tmp_path, served, body, code, words):
    reply = raw_ask(ctx, control.endpoint_path(tmp_path, "testd"), body)
    assert reply["ok"] is False and reply["code"] == code
    assert words in reply["error"]
    assert isinstance(control.ask(ctx, tmp_path, "testd", DaemonStatus()), DaemonInfo)


def test_no_daemon_is_reported_at_once(ctx, tmp_path):
    began = time.monotonic()
    with pytest.raises(NotAnswering, match="no control socket"):
        control.ask(ctx, tmp_path, "paymentd", DaemonStatus(), timeout=5)
    assert time.monotonic() - began < 0.5


def test_a_stale_socket_file_is_reported_at_once(ctx, tmp_path):
    """A daemon killed with -9 leaves its socket file; nobody listens there."""
    code = ("import sys, zmq, pathlib; from lthn.control import ControlServer; "
            "s = ControlServer(zmq.Context(), pathlib.Path(sys.argv[1]), 'paymentd'); "
            "print('bound', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "bound"
    proc.kill()
    proc.wait()
    assert control.endpoint_path(tmp_path, "paymentd").exists()
    began = time.monotonic()
    with pytest.raises(NotAnswering, match="nothing listens"):
        control.ask(ctx, tmp_path, "paymentd", DaemonStatus(), timeout=5)
    assert time.monotonic() - began < 0.5


def test_a_hung_daemon_is_given_up_after_the_deadline(ctx, tmp_path):
    server = ControlServer(ctx, tmp_path, "paymentd")   # bound, never drained
    try:
        began = time.monotonic()
        with pytest.raises(NotAnswering, match="did not answer daemon.status within 0.3 s"):
            control.ask(ctx, tmp_path, "paymentd", DaemonStatus(), timeout=0.3)
        assert 0.25 < time.monotonic() - began < 2
    finally:
        server.close()


def test_every_catalogue_entry_builds_from_its_own_fields():
    for name, cls in CATALOGUE.items():
        assert cls.name == name and cls.__doc__
        assert cls.reply.__doc__
    req = build(AddBan, {"address": "192.0.2.1", "seconds": 60, "reason": "probe"})
    assert req.seconds == 60.0 and isinstance(req.seconds, float)
