"""`lthn-node reload`: apply a changed node config to the running node (issue #15).

One path, whoever asks (`lthn-node reload -c CONFIG`, or SIGHUP to `lthn-node run`):
1. the config is checked as at a start (a mistake: one line, exit 2, nothing touched);
2. haproxy's and squid's configs are rendered from it beside the running ones and checked
   by haproxy and squid themselves (refused: exit 2, nothing touched);
3. every running program gets SIGHUP through supervisord, squid before haproxy: lthn-squid
   reconfigures squid, lthn-haproxy reloads haproxy without refusing a connection, the
   daemons read the config file again (lthn/daemon.py);
4. settings a reload cannot apply are named, with the restart each needs (`RESTART`).

The config the node runs with is kept in `run/node-config.json` (written by `lthn-node
run` and by each reload), so a reload can say what changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lthn.config import Config
from lthn.config_changes import flat, restarts_needed
from lthn.exits import EXIT_CONFIG, EXIT_NOT_ANSWERING, EXIT_OK
from lthn.files import write_atomically
from lthn.node.programs import PROGRAMS
from lthn.node.supervision import (
    ctl_arguments,
    environment,
    parse_status,
    supervisord_conf,
    tool,
)


def snapshot_path(config: Config) -> Path:
    return config.state / "run" / "node-config.json"


def save_snapshot(config: Config) -> None:
    write_atomically(snapshot_path(config), json.dumps(flat(config), indent=1) + "\n",
                     mode=0o600)


def check_generated(config: Config, config_path: str) -> str | None:
    """haproxy's and squid's configs rendered from `config` beside the running ones and
    checked by haproxy and squid themselves (`lthn-haproxy --check-reload`); the first
    problem, or None."""
    for script in ("lthn-haproxy", "lthn-squid"):
        result = subprocess.run([tool(script), "-c", config_path, "--check-reload"],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            words = (result.stderr or result.stdout).strip().removeprefix("Error: ")
            return words.replace("\n", "; ")[:600]
    return None


def running_programs(config: Config, config_path: str) -> dict[str, str] | None:
    """supervisorctl's view ({process: state}), or None when the node is not running."""
    result = subprocess.run([tool("supervisorctl"), "-c", str(supervisord_conf()), "status"],
                            capture_output=True, text=True, timeout=30, check=False,
                            env=environment(config, config_path))
    states = parse_status(result.stdout)
    return states or None


class ReloadError(Exception):
    """The reload did not happen: `code` is the exit code, the text says why."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass
class Reloaded:
    signalled: list[str]              # processes asked to reload (authd_0, squid, ...)
    skipped: list[str]                # processes of reloading programs not running
    restarts: list[tuple[str, str]]   # (setting, what to restart) a reload cannot apply


def reload(config: Config, config_path: str) -> Reloaded:
    """Steps 2 to 4 above (the caller loaded and checked the config). Raises ReloadError."""
    states = running_programs(config, config_path)
    if states is None:
        raise ReloadError(EXIT_NOT_ANSWERING, f"the node of {config_path} is not running (no "
                          f"supervisord answers on {config.state / 'run' / 'supervisor.sock'})")
    problem = check_generated(config, config_path)
    if problem:
        raise ReloadError(EXIT_CONFIG, f"{problem}; nothing was reloaded")
    try:
        running = json.loads(snapshot_path(config).read_text())
    except (OSError, ValueError):
        running = {}
    done = Reloaded([], [], restarts_needed(running, flat(config)) if running else [])
    names = []
    for program in sorted(PROGRAMS, key=lambda p: p.priority):
        if not program.reloads:
            continue
        for process, state in sorted(states.items()):
            if process.split(":")[0] != program.name:
                continue
            short = process.split(":")[-1]
            if state == "RUNNING":
                done.signalled.append(short)
                if program.name not in names:
                    names.append(program.name)
            else:
                done.skipped.append(short)
    if names:
        # squid before haproxy: a new squid_port is served before haproxy goes to it
        subprocess.run([tool("supervisorctl"), "-c", str(supervisord_conf()),
                        *ctl_arguments(["signal", "HUP", *names])],
                       capture_output=True, text=True, timeout=30, check=False,
                       env=environment(config, config_path))
    save_snapshot(config)
    return done


def reload_node(config: Config, config_path: str) -> int:
    """`lthn-node reload`: the reload, said in words; the exit code."""
    try:
        done = reload(config, config_path)
    except ReloadError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.code
    print("reload: config checked; asked to reload: " + (", ".join(done.signalled) or "nothing")
          + (f"; not running: {', '.join(done.skipped)}" if done.skipped else ""))
    for key, restart in done.restarts:
        print(f"reload: {key} changed, which a reload cannot apply: restart {restart} "
              f"(lthn-node ctl -c {config_path} restart ...)")
    return EXIT_OK
