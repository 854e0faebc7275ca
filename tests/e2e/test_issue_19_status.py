"""Issue 19: `lthnctl status` on a real node under supervisord; a stopped or hung daemon
shows down (within two heartbeats), and a command to it fails fast and clearly."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_NOT_ANSWERING, EXIT_OK
from tests.fixtures.common import wait_for
from tests.fixtures.ctl import lthnctl, table

DAEMONS = ("busd", "paymentd", "authd", "sessiond", "firewalld", "watchd")
INTERVAL = 1.0


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for the module (starting one takes seconds): the daemons (two authd
    processes, each with its own control socket), no proxy."""
    from tests.fixtures.node import Node, default_config, merge
    directory = tmp_path_factory.mktemp("issue19")
    config = merge(default_config(directory / "state"),
                   {"bus": {"heartbeat_interval": INTERVAL}})
    started = Node(directory, config, DAEMONS, authd_procs=2)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def status_rows(node) -> dict[str, dict[str, str]]:
    ran = lthnctl(node, "status")
    return {r["PROGRAM"]: r for r in table(ran.stdout)}


def test_every_program_is_up_with_its_heartbeat_and_version(node):
    def all_up():
        # up, and every daemon heard at least once: in its first seconds watchd judges a
        # daemon by its answer alone, and a daemon's first heartbeat may still be on its
        # way (a busy machine failed this test there)
        ran = lthnctl(node, "status", "--json")
        if ran.code != EXIT_OK:
            return None
        heard = all(p.get("heartbeat_age") is not None for p in ran.json()["programs"]
                    if p["process"] not in ("busd", "squid", "haproxy"))
        return ran if heard else None
    ran = wait_for(all_up, timeout=20, interval=0.3,
                   what="status exit 0 (all up) with every daemon's heartbeat")
    report = ran.json()
    by_process = {p["process"]: p for p in report["programs"]}
    for process in ("busd", "paymentd", "authd_0", "authd_1", "sessiond", "firewalld",
                    "watchd"):
        assert by_process[process]["state"] == "RUNNING"
        assert by_process[process]["up"] is True
    for process in ("paymentd", "authd_0", "authd_1", "sessiond", "firewalld", "watchd"):
        p = by_process[process]
        assert p["answers"] is True and p["version"]
        assert p["heartbeat_age"] is not None and p["heartbeat_age"] <= 2 * INTERVAL, process
        assert p["pid"] == node.pid(process)
    # left out with --without: off, not down
    assert by_process["haproxy"]["state"] == "off" and by_process["haproxy"]["up"] is None
    assert report["down"] == []
    assert report["bus"]["ok"] is True and report["bus"]["heartbeats"] >= 6
    assert report["wallet"]["state"] == "DOWN"   # nothing listens at the wallet URL
    assert report["authids"] == {} and report["active_authids"] == 0
    assert report["sessions"] == [] and report["bans"] == 0
    assert report["outbox"] == {"queued": 0, "stuck": 0}
    assert set(report) == {"version", "programs", "down", "wallet", "authids",
                           "active_authids", "sessions", "bans", "bus", "outbox"}
    # the table says the same
    rows = status_rows(node)
    assert rows["paymentd"]["UP"] == "up" and rows["paymentd"]["STATE"] == "RUNNING"
    assert rows["haproxy"]["STATE"] == "off"
    text = lthnctl(node, "status").stdout
    assert "wallet    down" in text and "bus       ok" in text


def test_a_stopped_daemon_shows_down_and_a_command_to_it_fails_fast(node):
    assert node.ctl("stop", "sessiond").returncode == 0
    try:
        ran = lthnctl(node, "status")
        assert ran.code == EXIT_FAILED
        row = {r["PROGRAM"]: r for r in table(ran.stdout)}["sessiond"]
        assert row["STATE"] == "STOPPED" and row["UP"] == "DOWN"
        assert "down      sessiond" in ran.stdout
        # what lthnctl needs to start and read the config on this (busy) machine, now
        startup = lthnctl(node, "config", "check").seconds
        ran = lthnctl(node, "loglevel", "sessiond", "debug")
        assert ran.code == EXIT_NOT_ANSWERING
        assert ran.seconds < startup + 1.0, f"took {ran.seconds:.2f} s ({startup:.2f} s " \
            "to start)"
        assert ran.stderr.startswith("Error: sessiond is not answering")
        assert "supervisord says STOPPED" in ran.stderr
        assert len(ran.stderr.strip().splitlines()) == 1
    finally:
        assert node.ctl("start", "sessiond").returncode == 0
    wait_for(lambda: lthnctl(node, "status").code == EXIT_OK, timeout=20, interval=0.3,
             what="all up again after sessiond restarted")


def test_a_hung_daemon_shows_down_within_two_heartbeats(node):
    pid = node.pid("firewalld")
    os.kill(pid, signal.SIGSTOP)   # RUNNING for supervisord, silent on the bus
    try:
        stopped = time.monotonic()
        wait_for(lambda: status_rows(node)["firewalld"]["UP"] == "DOWN",
                 timeout=2 * INTERVAL + 5, interval=0.2, what="firewalld down")
        # the last beat may have left just before the stop: down within two intervals of
        # it, plus the time one status takes
        assert time.monotonic() - stopped <= 2 * INTERVAL + 3
        report = lthnctl(node, "status", "--json").json()
        firewalld = next(p for p in report["programs"] if p["process"] == "firewalld")
        assert firewalld["state"] == "RUNNING" and firewalld["answers"] is False
        assert report["down"] == ["firewalld"]
        ran = lthnctl(node, "loglevel", "firewalld", "info")
        assert ran.code == EXIT_NOT_ANSWERING and "did not answer" in ran.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: status_rows(node)["firewalld"]["UP"] == "up", timeout=10,
             interval=0.2, what="firewalld up again")


def test_loglevel_sets_every_authd_process_and_bad_arguments_exit_2(node):
    ran = lthnctl(node, "loglevel", "authd", "info", "--json")
    assert ran.code == EXIT_OK, ran.stderr
    assert ran.json() == {"processes": [
        {"process": "authd_0", "previous": "debug", "level": "info"},
        {"process": "authd_1", "previous": "debug", "level": "info"}]}
    node.wait_log("authd_0", "log level debug -> info")
    node.wait_log("authd_1", "log level debug -> info")
    ran = lthnctl(node, "loglevel", "authd_1", "debug")
    assert ran.code == EXIT_OK and table(ran.stdout) == [
        {"PROCESS": "authd_1", "PREVIOUS": "info", "LEVEL": "debug"}]
    ran = lthnctl(node, "loglevel", "authd", "loud")
    assert ran.code == EXIT_CONFIG and "invalid choice" in ran.stderr
    ran = lthnctl(node, "loglevel", "haproxy", "info")
    assert ran.code == EXIT_CONFIG
    assert ran.stderr.startswith("Error: program: must be one of")

