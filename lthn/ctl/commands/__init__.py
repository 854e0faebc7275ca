"""lthnctl commands: one module each, listed here explicitly (no registration by import)."""

from __future__ import annotations

from lthn.ctl.commands import authid_show, config_check, config_sample, outbox

COMMANDS = [config_check, config_sample, authid_show, outbox]
