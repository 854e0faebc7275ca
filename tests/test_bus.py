"""The bus between real processes: a publisher process -> lthn-busd -> lthn-tap and
lthn-firewalld (issue #2). Broken messages are logged and dropped; nobody crashes, and the
next good message still arrives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lthn.node.supervision import tool
from tests.fixtures.common import wait_for

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 4096


class Processes:
    """Processes a test starts, each logging to a file; all killed at teardown."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, name: str, text: str, timeout: float = 10.0) -> str:
        return wait_for(lambda: text in self.log(name) and self.log(name), timeout=timeout,
                        what=f"{text!r} in {name}'s output")

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        return codes


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[Processes, Path]]:
    """A running lthn-busd on ipc:// endpoints in the test's state dir, and its config."""
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "provider": {"id": "cd" * 32},
        "state_dir": str(tmp_path / "state"),
        "bus": {"max_message_bytes": MAX_BYTES},
        "firewall": {"refusal_threshold": 1, "refusal_window": 60},
        "log_level": "debug",
    }))
    procs = Processes(tmp_path)
    procs.start("busd", tool("lthn-busd"), "-c", str(config))
    try:
        procs.wait_log("busd", "bus: forwarding")
        yield procs, config
    finally:
        procs.stop_all()


def publisher(procs: Processes, config: Path, name: str, source: str, bad: bool = False) \
        -> Path:
    stop = config.parent / f"{name}.stop"
    procs.start(name, sys.executable, "-m", "tests.fixtures.bus_publisher", "--config",
                str(config), "--source", source, "--stop-file", str(stop),
                *(["--bad"] if bad else []))
    return stop


def test_message_crosses_processes_through_busd(bus):
    procs, config = bus
    procs.start("tap", tool("lthn-tap"), "-c", str(config), "--json", "access.")
    procs.start("firewalld", tool("lthn-firewalld"), "-c", str(config))
    procs.wait_log("firewalld", "firewalld: ready")
    stop = publisher(procs, config, "pub", "127.0.0.2")
    try:
        line = procs.wait_log("tap", '"topic": "access.refused"').splitlines()[0]
        procs.wait_log("firewalld", "source 127.0.0.2: 1 refusals in 60 s (threshold 1)")
    finally:
        stop.touch()
    got = json.loads(line)
    pub_pid = procs.procs["pub"].pid
    assert got["sender"] == f"testpub.{pub_pid}"
    assert isinstance(got["seq"], int) and got["seq"] >= 1
    assert got["data"] == {"reason": "NO_PAYMENT", "source": "127.0.0.2",
                           "authid": "1A00112233445566", "destination": "example:443",
                           "kind": "proxy"}
    assert procs.procs["pub"].wait(timeout=10) == 0


DROPPED = [
    "body is not msgpack",
    "unknown topic 'access.refused.v9' from testpub.",
    f"over the {MAX_BYTES} byte limit",
    ": version 99, expected 1",
    ": missing field kind",
    ": field source must be str",
    "expected 2 frames, got 3",
    "topic is not ASCII",
    "body is not a map",
]


def test_broken_messages_are_dropped_and_nobody_crashes(bus):
    procs, config = bus
    procs.start("tap", tool("lthn-tap"), "-c", str(config), "--json")
    procs.start("firewalld", tool("lthn-firewalld"), "-c", str(config))
    procs.wait_log("firewalld", "firewalld: ready")
    stop = publisher(procs, config, "badpub", "127.0.0.9", bad=True)
    try:
        for reason in DROPPED:
            procs.wait_log("firewalld", reason)
            procs.wait_log("tap", reason)
        procs.wait_log("firewalld", "source 127.0.0.9: 1 refusals")
    finally:
        stop.touch()
    assert procs.procs["badpub"].wait(timeout=10) == 0
    # every subscriber and the forwarder are still there, and a new good message arrives
    assert procs.alive("busd") and procs.alive("tap") and procs.alive("firewalld")
    stop = publisher(procs, config, "pub", "127.0.0.10")
    try:
        procs.wait_log("firewalld", "source 127.0.0.10: 1 refusals")
        procs.wait_log("tap", '"source": "127.0.0.10"')
    finally:
        stop.touch()
    assert procs.alive("busd") and procs.alive("tap") and procs.alive("firewalld")
    assert "Traceback" not in procs.log("firewalld") + procs.log("tap") + procs.log("busd")
    codes = procs.stop_all()
    # the daemons' SIGTERM path is a clean exit; lthn-tap is interactive and just dies of it
    assert codes["firewalld"] == 0 and codes["busd"] == 0
    assert "firewalld: stopped" in procs.log("firewalld")
