"""Supervision of the node's programs by supervisord: where its config is, the variables it
reads, the names `supervisorctl` shows, and the arguments `lthn-node ctl` passes on."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lthn.config import Config
from lthn.node.programs import (
    GROUPS,
    MODE_FILES,
    PROGRAMS,
    Program,
    by_name,
    procs_variable,
    start_variable,
    wanted,
)

CONF_NAME = "supervisord.conf"
SHARE_DIR = Path("share") / "lthn-exit-node"
GROUP_COMMANDS = ("start", "stop", "restart", "status", "signal", "clear")
ONE_PROCESS_COMMANDS = ("tail", "pid", "fg")


def supervisord_conf() -> Path:
    """supervisord.conf: $LTHN_SUPERVISORD_CONF, the source tree's, or the installed copy."""
    override = os.environ.get("LTHN_SUPERVISORD_CONF")
    candidates = [Path(override)] if override else []
    candidates += [Path(__file__).resolve().parents[2] / CONF_NAME,  # source or editable
                   Path(sys.prefix) / SHARE_DIR / CONF_NAME]           # pip install .
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("supervisord.conf not found (looked in "
                            + ", ".join(str(p) for p in candidates) + ")")


def tool(name: str) -> str:
    """A program installed beside this Python (a venv's bin/) first, then from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or name


def modes(config: Config) -> set[str]:
    """The optional modes the config turns on."""
    return {"vpn"} if config.vpn.enabled else set()


def node_programs(config: Config) -> tuple[Program, ...]:
    """The programs this config runs (the VPN ones only in VPN mode)."""
    on = modes(config)
    return tuple(p for p in PROGRAMS if wanted(p, on))


def environment(config: Config, config_path: str, without: tuple[str, ...] = (),
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables supervisord.conf reads, on top of `base` (default: os.environ)."""
    env = dict(os.environ if base is None else base)
    env["LTHN_CONFIG"] = str(Path(config_path).absolute())
    env["LTHN_STATE_DIR"] = str(config.state)
    on = modes(config)
    # the programs of a mode that is off are not in supervisord's config at all, so
    # `status` neither lists them nor exits 3 for them
    env["LTHN_MODE_FILES"] = " ".join(MODE_FILES[m] for m in sorted(on))
    for program in PROGRAMS:
        if not wanted(program, on):
            env[start_variable(program)] = "false"
        env.setdefault(start_variable(program), "true")
        if program.group:
            env.setdefault(procs_variable(program), "1")
    for program in without:
        env[start_variable(by_name(program))] = "false"
    # supervisord finds lthn-busd & co. on PATH: put this Python's scripts first
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_environment(env: dict[str, str]) -> str | None:
    """What is wrong with the variables the operator may set, or None."""
    for program in PROGRAMS:
        if program.group:
            procs = env.get(procs_variable(program), "1")
            if not procs.isdigit() or not 1 <= int(procs) <= 64:
                return (f'{procs_variable(program)}: must be a whole number from 1 to 64 '
                        f'(got "{procs}")')
    for program in PROGRAMS:
        value = env.get(start_variable(program), "true")
        if value not in ("true", "false"):
            return f'{start_variable(program)}: must be true or false (got "{value}")'
    return None


def parse_status(text: str) -> dict[str, str]:
    """`supervisorctl status` output -> {process name: state}, e.g. {"authd:authd_0": "RUNNING"}."""
    states = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isupper() and parts[1].isalpha():
            states[parts[0]] = parts[1]
    return states


def process_names(programs: tuple[str, ...], authd_procs: int = 1) -> list[str]:
    """The names `supervisorctl status` shows for these programs."""
    names = []
    for program in programs:
        if program in GROUPS:
            names += [f"{program}:{program}_{i}" for i in range(authd_procs)]
        else:
            names.append(program)
    return names


def ctl_arguments(args: list[str]) -> list[str]:
    """`stop authd` -> `stop authd:*`; `tail authd` -> `tail authd:authd_0`."""
    if not args:
        return args
    command, rest = args[0], args[1:]
    if command in GROUP_COMMANDS:
        rest = [f"{a}:*" if a in GROUPS else a for a in rest]
    elif command in ONE_PROCESS_COMMANDS:
        rest = [f"{a}:{a}_0" if a in GROUPS else a for a in rest]
    return [command, *rest]
