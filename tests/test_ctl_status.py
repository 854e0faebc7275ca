"""lthnctl status's verdicts (issue #19), on the data it gathers: when a process is up."""

from __future__ import annotations

from lthn.control import NotAnswering
from lthn.ctl.commands.status import heartbeats_usable, program_row
from lthn.node.supervisor_rpc import ProcessInfo
from lthn.requests import DaemonInfo, Heartbeats

NOW = 1_700_000_000.0
INTERVAL = 5.0


def info(name: str = "paymentd", state: str = "RUNNING", uptime: float = 600.0,
         pid: int = 42) -> ProcessInfo:
    return ProcessInfo(name=name, group=name.split("_")[0], state=state, pid=pid,
                       start=NOW - uptime if uptime else 0.0, now=NOW, description="")


def answer(started: float = NOW - 600) -> DaemonInfo:
    return DaemonInfo(daemon="paymentd", process="paymentd", pid=42, software="0.1.0",
                      started=started, details={})


def beat(age: float, pid: int = 42) -> dict:
    return {"paymentd": {"process": "paymentd", "pid": pid, "age": age}}


def test_up_when_running_answering_and_beating():
    row = program_row(info(), answer(), beat(1.0), INTERVAL, heard=True)
    assert row["up"] is True and row["heartbeat_age"] == 1.0 and row["version"] == "0.1.0"


def test_down_after_two_missed_heartbeats_even_when_it_answers():
    assert program_row(info(), answer(), beat(10.1), INTERVAL, heard=True)["up"] is False
    assert program_row(info(), answer(), beat(9.9), INTERVAL, heard=True)["up"] is True


def test_a_beat_of_an_earlier_pid_does_not_count():
    row = program_row(info(), answer(), beat(1.0, pid=7), INTERVAL, heard=True)
    assert row["up"] is False and row["heartbeat_age"] is None


def test_a_young_process_is_not_down_for_a_beat_not_yet_due():
    assert program_row(info(uptime=3.0), answer(), {}, INTERVAL, heard=True)["up"] is True


def test_down_when_not_answering_or_not_running_and_off_when_left_out():
    assert program_row(info(), NotAnswering("x"), beat(1.0), INTERVAL, True)["up"] is False
    stopped = program_row(info(state="STOPPED", pid=0), None, {}, INTERVAL, True)
    assert stopped["up"] is False and stopped["answers"] is None
    off = program_row(info(state="STOPPED", uptime=0, pid=0), None, {}, INTERVAL, True)
    assert off["state"] == "off" and off["up"] is None
    assert program_row(info("haproxy"), None, {}, INTERVAL, True)["up"] is True


def test_without_usable_heartbeats_answering_is_enough():
    assert program_row(info(), answer(), {}, INTERVAL, heard=False)["up"] is True


def test_heartbeats_of_a_young_or_silent_watchd_are_not_used():
    beats = Heartbeats(interval=INTERVAL, daemons=[])
    assert heartbeats_usable(answer(started=NOW - 60), beats, INTERVAL, NOW) is True
    # restarted 4 s ago: it has not heard every daemon yet
    assert heartbeats_usable(answer(started=NOW - 4), beats, INTERVAL, NOW) is False
    assert heartbeats_usable(NotAnswering("x"), beats, INTERVAL, NOW) is False
    assert heartbeats_usable(answer(), NotAnswering("x"), INTERVAL, NOW) is False
