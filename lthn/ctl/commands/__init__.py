"""lthnctl commands: one module each, listed here explicitly (no registration by import)."""

from __future__ import annotations

from lthn.ctl.commands import (
    authid_grant,
    authid_list,
    authid_revoke,
    authid_show,
    ban_add,
    ban_del,
    ban_list,
    config_check,
    config_sample,
    loglevel,
    outbox,
    refresh,
    reload,
    sdp_sign,
    sdp_verify,
    session_kill,
    session_list,
    session_show,
    spend,
    status,
    topup,
)

COMMANDS = [
    config_check, config_sample,
    status, refresh, reload, loglevel, outbox,
    authid_list, authid_show, authid_grant, authid_revoke,
    topup, spend,
    session_list, session_show, session_kill,
    ban_list, ban_add, ban_del,
    sdp_verify, sdp_sign,
]
