"""What a change of each setting needs: a reload applies it, or a restart of a named
program (issue #15). Read by `lthn-node reload` (lthn/node/reload.py), which says what it
cannot apply, by every daemon's reload (lthn/daemon_control.py), which logs the same, and
by README's table (`python -m lthn.reference reload`).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from lthn.config import Config
from lthn.schema import walk

# settings a reload cannot apply: (key or key prefix, what to restart); everything else
# is applied by a reload
RESTART: tuple[tuple[str, str], ...] = (
    ("state_dir", "the whole node"),
    ("bus", "the whole node"),
    ("proxy.backend", "squid"),
    ("proxy.status_port", "authd"),
    ("proxy.log_port", "authd and sessiond"),
    ("wallet.atomic_units", "the whole node"),
    ("wallet", "paymentd"),
    ("sessions", "sessiond"),
    ("firewall", "firewalld"),
    ("metrics", "watchd"),
    ("audit", "watchd"),
    ("vpn", "the whole node"),
)
# who applies what a reload applies (for README's table)
APPLIED_BY = {
    "provider": "authd's status answers",
    "services": "paymentd, authd, sessiond",
    "sdp": "paymentd, authd, sessiond",
    "proxy": "haproxy (seamless) and squid (reconfigure)",
    "log_level": "every program",
}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def flat(config: Config) -> dict[str, Any]:
    """Every setting by its key path (`proxy.port`); lists stay whole."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = _plain(value)
    walk("", dataclasses.asdict(config))
    return out


def restarts_needed(running: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, what to restart) for every changed setting a reload cannot apply."""
    out = []
    for key in sorted(set(running) | set(new)):
        if running.get(key) == new.get(key):
            continue
        for prefix, restart in RESTART:
            if key == prefix or key.startswith(prefix + "."):
                out.append((key, restart))
                break
    return out


def applies(key: str) -> str:
    """README: what a change of `key` needs."""
    for prefix, restart in RESTART:
        if key == prefix or key.startswith(prefix + ".") or prefix.startswith(key + "."):
            return f"restart {restart}"
    for prefix, who in APPLIED_BY.items():
        if key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "["):
            return f"reload: {who}"
    return "reload"


def reference_table() -> str:
    """README's table: what a change of each setting needs (neighbours that need the same
    are one row)."""
    rows: list[tuple[list[str], str]] = []
    for path, hint, field in walk(Config):
        if not field.init or dataclasses.is_dataclass(hint) or "[]." in path:
            continue
        need = applies(path)
        if rows and rows[-1][1] == need and rows[-1][0][0].split(".")[0] == path.split(".")[0]:
            rows[-1][0].append(path)
        else:
            rows.append(([path], need))
    lines = ["| settings | a change needs |", "| --- | --- |"]
    lines += [f"| {', '.join(f'`{k}`' for k in keys)} | {need} |" for keys, need in rows]
    return "\n".join(lines) + "\n"
