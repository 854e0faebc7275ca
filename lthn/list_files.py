"""The operator's list files, watched (issue #17): `src_allow.ips`, `src_deny.ips`,
`dst_deny.ips`, `dst_deny.doms` (paths: `Config.list_path`; format: lthn/address_lists.py).
firewalld watches all four (for haproxy and squid), lthn-vpnd the two source lists (for
VPN logins); each reads the files itself.

Each file's (inode, size, mtime) is compared every poll; a changed file is parsed again.
Malformed lines are logged with file and line number and skipped, once per change of the
file. A file that cannot be read keeps the last good list, said once per outage. An
absent file is an empty list.

    files = ListFiles(config, {"src_deny": ListKind.ADDRESSES})
    changed = files.poll()          # on a timer: the names whose entries changed
    files.lists()["src_deny"]       # ("10.0.0.0/8", "203.0.113.7", ...)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lthn.address_lists import ListKind, ListUnreadable, read_list
from lthn.config import Config

log = logging.getLogger(__name__)

MAX_PROBLEMS_LOGGED = 20   # per file and change, then a count


@dataclass
class Watched:
    path: Path
    kind: ListKind
    stamp: tuple[int, int, int] | None = None    # None: absent
    entries: tuple[str, ...] = ()
    failing: str | None = None                   # why the last read failed


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (-1, exc.errno or 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ListFiles:
    """The lists named in `kinds` (Config.list_path names: "src_deny", "src_allow",
    "dst_deny_ips", "dst_deny_domains"), each of the kind given."""

    def __init__(self, config: Config, kinds: Mapping[str, ListKind]) -> None:
        self.files = {name: Watched(config.list_path(name), kind)
                      for name, kind in kinds.items()}
        self.loaded = False

    def lists(self) -> dict[str, tuple[str, ...]]:
        return {name: w.entries for name, w in self.files.items()}

    def paths(self) -> dict[str, Path]:
        return {name: w.path for name, w in self.files.items()}

    def poll(self) -> set[str]:
        """Re-read the files that changed; the names whose entries changed."""
        changed = set()
        for name, watched in self.files.items():
            stamp = _stamp(watched.path)
            if self.loaded and stamp == watched.stamp and watched.failing is None:
                continue
            if self._read(watched, stamp):
                changed.add(name)
        self.loaded = True
        return changed

    def _read(self, watched: Watched, stamp: tuple[int, int, int] | None) -> bool:
        try:
            parsed = read_list(watched.path, watched.kind)
        except ListUnreadable as exc:
            if watched.failing != str(exc):
                log.error("%s; keeping its last good list (%d entries)", exc,
                          len(watched.entries))
                watched.failing = str(exc)
            watched.stamp = stamp
            return False
        if watched.failing is not None:
            log.info("%s: readable again", watched.path)
            watched.failing = None
        watched.stamp = stamp
        for problem in parsed.problems[:MAX_PROBLEMS_LOGGED]:
            log.warning("%s; line skipped", problem)
        if len(parsed.problems) > MAX_PROBLEMS_LOGGED:
            log.warning("%s: %d more malformed lines skipped", watched.path,
                        len(parsed.problems) - MAX_PROBLEMS_LOGGED)
        if parsed.entries == watched.entries and self.loaded:
            return False
        before = len(watched.entries)
        watched.entries = parsed.entries
        state = "absent, empty" if stamp is None else f"{len(parsed.entries)} entries"
        if self.loaded:
            log.info("%s: %s (was %d), applied", watched.path, state, before)
        else:
            log.info("%s: %s", watched.path, state)
        return True
