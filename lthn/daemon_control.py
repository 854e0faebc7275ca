"""What every daemon answers on its control endpoint (issue #19): status, log level,
refresh and its own metrics. A daemon adds the requests it owns with `answer()`.

Built by the daemon loop (`lthn.daemon.Daemon`) and polled with its other sockets, so a
request is answered between two turns of the loop, never while a transaction is open.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from lthn import config as config_mod
from lthn.config import Config
from lthn.config_changes import flat, restarts_needed
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

    def reload_config(self) -> Config | None:
        """Re-read the config file: a mistake keeps the running config (logged, None); the
        log level applies at once; a change a reload cannot apply is named with the
        restart it needs (lthn/node/reload.py). Returns the new config."""
        old = self.daemon.config
        try:
            new = config_mod.load(old.source)
        except ConfigError as exc:
            log.error("%s: reload: %s; keeping the running config", self.process, exc)
            return None
        logging.getLogger().setLevel(new.log_level.upper())
        restarts = restarts_needed(flat(old), flat(new))
        if restarts:
            log.warning("%s: reload: log level %s; changed, which a reload cannot apply: %s",
                        self.process, new.log_level,
                        ", ".join(f"{key} (restart {what})" for key, what in restarts))
        else:
            log.info("%s: reload: log level %s", self.process, new.log_level)
        return new

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
