"""lthnctl commands: one module each, listed here explicitly (no registration by import)."""

from __future__ import annotations

from lthn.ctl.commands import authid_show, config_check, config_sample, loglevel, outbox, status

COMMANDS = [config_check, config_sample, status, authid_show, loglevel, outbox]
