"""firewalld's side of haproxy (issue #17): the runtime ACLs of the operator's lists, the
runtime map of bans, and the per-source counters, all over the admin socket, never a
reload. Names and paths are lthn/haproxy/contract.py's.

- a list is swapped whole and atomically: `prepare acl` (a new version), `add acl @v`
  for each entry (many per command line, `;`-separated), `commit acl @v`; its run file is
  rewritten too, so a restarted haproxy starts from the same list;
- a ban is `add map` (or `set map` when the address has an entry) with its expiry in unix
  seconds; haproxy refuses while the expiry is in the future, so a ban ends on time even
  when firewalld is not running. A lifted ban is `del map`;
- a new haproxy process (new pid or start time, checked every second) gets every list and
  every ban again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lthn.config import Config
from lthn.haproxy import contract
from lthn.haproxy.firewall_files import acl_entries, map_expiry, table_key, write_run_files
from lthn.haproxy.runtime import HaproxyAdmin, HaproxyUnavailable
from services.firewalld.offences import SourceCounters, TableAnswerError, parse_show_table

log = logging.getLogger(__name__)

# one CLI line holds many `;`-separated commands; haproxy's buffer is 16 kB
LINE_BUDGET = 12_000


class RuntimeAnswerError(ValueError):
    """haproxy answered a change (add, del, set, prepare, commit) with an error."""


@dataclass(frozen=True)
class ProcessIdentity:
    """Which haproxy process answers (`show info`); a new one has a new pid or start."""
    pid: str
    start: str

    @classmethod
    def parse(cls, answer: str) -> ProcessIdentity:
        info = {}
        for line in answer.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                info[name.strip()] = value.strip()
        if "Pid" not in info:
            raise RuntimeAnswerError(f"show info without Pid: {answer[:80]!r}")
        return cls(info["Pid"], info.get("Start_time_sec", ""))


class HaproxyFirewall:
    def __init__(self, config: Config, admin: HaproxyAdmin) -> None:
        self.config = config
        self.admin = admin
        self.acls: dict[str, tuple[str, ...]] = {}   # what haproxy should hold
        self.bans: dict[str, float] = {}
        self.process: ProcessIdentity | None = None
        self.unreachable = False
        self.dirty = True          # haproxy may not hold what it should: resync

    # --- the socket ---
    def _command(self, line: str, change: bool = True) -> str | None:
        """One command line; None when haproxy is not there. A change (add, del, set,
        commit, prepare) answers nothing but `New version created: N` on success: any
        other line is its error."""
        try:
            answer = self.admin.command(line)
        except HaproxyUnavailable as exc:
            if not self.unreachable:
                log.warning("haproxy: unreachable (%s); firewall rules wait for it", exc)
                self.unreachable = True
            self.dirty = True
            return None
        if self.unreachable:
            log.info("haproxy: reachable again")
            self.unreachable = False
        if change:
            failed = [x.strip() for x in answer.splitlines()
                      if x.strip() and not x.startswith("New version created")]
            if failed:
                raise RuntimeAnswerError(failed[0])
        return answer

    def _batch(self, commands: list[str]) -> bool:
        line: list[str] = []
        size = 0
        for command in commands:
            if line and size + len(command) + 2 > LINE_BUDGET:
                if self._command("; ".join(line)) is None:
                    return False
                line, size = [], 0
            line.append(command)
            size += len(command) + 2
        return not line or self._command("; ".join(line)) is not None

    def _version(self, kind: str, path: Path) -> str | None:
        answer = self._command(f"prepare {kind} {path}")
        if answer is None:
            return None
        words = answer.strip().split()
        if not words or not words[-1].isdigit():
            raise RuntimeAnswerError(f"prepare {kind}: {answer.strip()[:80]}")
        return words[-1]

    def _swap(self, kind: str, path: Path, entries: list[str]) -> bool:
        """Replace a whole ACL or map at once (prepare, add @v, commit @v)."""
        version = self._version(kind, path)
        if version is None:
            return False
        if not self._batch([f"add {kind} @{version} {path} {e}" for e in entries]):
            return False
        return self._command(f"commit {kind} @{version} {path}") is not None

    # --- lists ---
    def set_lists(self, lists: Mapping[str, tuple[str, ...]]) -> bool:
        """Write the run files and swap every ACL whose entries changed."""
        write_run_files(self.config, lists)
        wanted = acl_entries(lists)
        ok = True
        for name, entries in wanted.items():
            if self.acls.get(name) == entries and not self.dirty:
                continue
            self.acls[name] = entries
            if not self.dirty:
                try:
                    ok = self._swap("acl", contract.source_acl_path(self.config, name),
                                    list(entries)) and ok
                except RuntimeAnswerError as exc:
                    log.warning("haproxy: list %s not applied (%s); every list will be "
                                "swapped whole at the next resync", name, exc)
                    self.dirty = True
                    ok = False
        return ok

    # --- bans ---
    def ban(self, ip: str, expires: float) -> bool:
        """Refuse `ip` until `expires` (False: not applied yet; the next resync will)."""
        return self.ban_many({ip: expires})

    def ban_many(self, bans: Mapping[str, float], forget: bool = False) -> bool:
        """Refuse each address until its expiry, in as few command lines as fit; with
        `forget`, also set each one's offence count back to zero, so a banned source is
        not read again at every poll (its refusals as BANNED are no offences)."""
        path = contract.bans_map_path(self.config)
        commands = []
        for ip, expires in bans.items():
            verb = "set" if ip in self.bans else "add"
            self.bans[ip] = expires
            commands.append(f"{verb} map {path} {ip} {map_expiry(expires)}")
            if forget and "/" not in ip:
                commands.append(f"set table {contract.SOURCE_TABLE} key {table_key(ip)} "
                                "data.gpc_rate 0")
        if self.dirty:
            return False
        try:
            return self._batch(commands)
        except RuntimeAnswerError as exc:
            # haproxy's map is not what we think: swap it whole at the next resync
            log.warning("haproxy: banning %d sources: %s; the bans map will be swapped "
                        "whole", len(bans), exc)
            self.dirty = True
            return False

    def unban(self, ip: str) -> bool:
        known = self.bans.pop(ip, None) is not None
        if self.dirty or not known:
            return False
        try:
            self._command(f"del map {contract.bans_map_path(self.config)} {ip}")
        except RuntimeAnswerError:
            self.dirty = True
            return False
        if "/" not in ip:
            self.forget_offences(ip)
        return not self.dirty

    def forget_offences(self, source: str) -> None:
        """A source's offence count back to zero (a lifted ban must not re-ban at once)."""
        key = table_key(source)
        try:
            self._command(f"set table {contract.SOURCE_TABLE} key {key} data.gpc_rate 0")
        except RuntimeAnswerError:
            pass   # no entry: nothing counted

    # --- counters ---
    def offenders(self, at_least: int) -> list[SourceCounters] | None:
        """Sources with at least `at_least` offences in the window (None: no haproxy)."""
        answer = self._command(f"show table {contract.SOURCE_TABLE} data.gpc_rate ge "
                               f"{at_least}", change=False)
        if answer is None:
            return None
        try:
            return parse_show_table(answer)
        except TableAnswerError as exc:
            log.warning("haproxy: cannot read %s: %s", contract.SOURCE_TABLE, exc)
            return None

    def sources(self) -> list[SourceCounters] | None:
        """Every source with an offence in the window (the report), or None."""
        return self.offenders(1)

    # --- a new haproxy process gets everything again ---
    def check_process(self) -> bool:
        """Resync when haproxy's process changed or a change did not reach it; True when
        haproxy holds what it should."""
        answer = self._command("show info", change=False)
        if answer is None:
            return False
        identity = ProcessIdentity.parse(answer)
        fresh = identity != self.process
        if fresh:
            self.process = identity
            self.dirty = True
        if self.dirty:
            self.dirty = False
            ok = all([self._swap("acl", contract.source_acl_path(self.config, name),
                                 list(entries)) for name, entries in self.acls.items()])
            ok = self._swap("map", contract.bans_map_path(self.config),
                            [f"{ip} {map_expiry(exp)}" for ip, exp in self.bans.items()]) and ok
            if not ok:
                self.dirty = True
            elif fresh:
                log.info("haproxy: firewall rules applied to process %s (%d bans)",
                         identity.pid, len(self.bans))
        return not self.dirty
