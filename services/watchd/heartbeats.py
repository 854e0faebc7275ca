"""The last heartbeat of every daemon process (what `lthnctl status` calls up or down).

Keyed by supervisord's process name (`authd_0`): a restarted process replaces its
predecessor's entry. A process is down when its last heartbeat is older than two
intervals (`DOWN_AFTER`), so `status` shows a hung or vanished daemon within two beats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lthn.bus import Envelope
from lthn.messages import NodeHeartbeat

DOWN_AFTER = 2   # missed intervals


@dataclass(frozen=True)
class Beat:
    process: str
    pid: int
    sender: str
    last_seen: float   # unix time watchd received it


class HeartbeatBook:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()   # the metrics thread reads while the loop writes
        self.beats: dict[str, Beat] = {}

    def seen(self, env: Envelope) -> None:
        msg = env.message
        assert isinstance(msg, NodeHeartbeat)
        with self.lock:
            self.beats[msg.daemon] = Beat(msg.daemon, msg.pid, env.sender, self.clock())

    def entries(self) -> list[dict]:
        """Every process heard, as the `watchd.heartbeats` reply lists them."""
        now = self.clock()
        with self.lock:
            beats = list(self.beats.values())
        return [{"daemon": b.sender.split(".", 1)[0], "process": b.process, "pid": b.pid,
                 "sender": b.sender, "last_seen": b.last_seen,
                 "age": round(now - b.last_seen, 3)}
                for b in sorted(beats, key=lambda b: b.process)]


def is_up(age: float, interval: float) -> bool:
    return age <= DOWN_AFTER * interval
