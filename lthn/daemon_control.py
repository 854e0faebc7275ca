"""What every daemon answers on its control endpoint (issue #19): status, log level,
refresh and its own metrics. A daemon adds the requests it owns with `answer()`.

Built by the daemon loop (`lthn.daemon.Daemon`) and polled with its other sockets, so a
request is answered between two turns of the loop, never while a transaction is open.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from lthn import config as config_mod
from lthn.control import Asked, ControlServer, Handler, Refused, process_name
from lthn.requests import (
    DaemonInfo,
    DaemonMetrics,
    DaemonStatus,
    Done,
    GetMetrics,
    LevelSet,
    Refresh,
    Request,
    SetLogLevel,
)
from lthn.schema import ConfigError
from lthn.stats import Stats
from lthn.version import VERSION

if TYPE_CHECKING:
    from lthn.daemon import Daemon

log = logging.getLogger(__name__)

LEVELS = ("debug", "info", "warning", "error")


class DaemonControl:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.process = process_name(daemon.name)
        self.started = time.time()
        self.stats = Stats()
        self.server = ControlServer(daemon.ctx, daemon.config.state, self.process)
        self.answer(DaemonStatus, self.on_status)
        self.answer(SetLogLevel, self.on_loglevel)
        self.answer(Refresh, self.on_refresh)
        self.answer(GetMetrics, self.on_metrics)

    def answer(self, cls: type[Request], handler: Handler) -> None:
        """Answer `cls` with `handler(request, asked) -> reply`; every answer is counted."""
        def counted(req: Any, asked: Asked) -> Any:
            self.stats.count("requests_total", {"request": cls.name})
            return handler(req, asked)
        self.server.answer(cls, counted)

    def close(self) -> None:
        self.server.close()

    def reload_config(self) -> None:
        """Re-read the config file: a mistake keeps the running config (logged); the log
        level applies at once; other changes are named, to be applied by a restart."""
        old = self.daemon.config
        try:
            new = config_mod.load(old.source)
        except ConfigError as exc:
            log.error("%s: reload: %s; keeping the running config", self.process, exc)
            return
        logging.getLogger().setLevel(new.log_level.upper())
        changed = [f.name for f in dataclasses.fields(new)
                   if f.init and f.name != "log_level"
                   and getattr(new, f.name) != getattr(old, f.name)]
        if changed:
            log.warning("%s: reload: log level %s; %s changed: restart %s to apply "
                        "(lthn-node ctl restart %s)", self.process, new.log_level,
                        ", ".join(changed), self.daemon.name, self.daemon.name)
        else:
            log.info("%s: reload: log level %s; nothing else changed", self.process,
                     new.log_level)

    # --- the requests every daemon answers ---
    def on_status(self, _req: DaemonStatus, _asked: Asked) -> DaemonInfo:
        details = self.daemon.status_details()
        if self.daemon.ledger_problem:   # e.g. "not writable: disk full" (#14)
            details = details | {"ledger": f"not writable: {self.daemon.ledger_problem}"}
        return DaemonInfo(daemon=self.daemon.name, process=self.process, pid=os.getpid(),
                          software=VERSION, started=self.started, details=details)

    def on_loglevel(self, req: SetLogLevel, asked: Asked) -> LevelSet:
        level = req.level.lower()
        if level not in LEVELS:
            raise Refused(f'level must be one of {", ".join(LEVELS)} (got "{req.level[:20]}")')
        root = logging.getLogger()
        previous = logging.getLevelName(root.level).lower()
        root.setLevel(level.upper())
        log.warning("%s: log level %s -> %s, asked by %s (until it restarts)", self.process,
                    previous, level, asked.actor)
        return LevelSet(previous=previous, level=level)

    def on_refresh(self, _req: Refresh, asked: Asked) -> Done:
        log.info("%s: refresh asked by %s", self.process, asked.actor)
        return Done(detail=self.daemon.refresh())

    def on_metrics(self, _req: GetMetrics, _asked: Asked) -> DaemonMetrics:
        return DaemonMetrics(metrics=self.stats.snapshot())
