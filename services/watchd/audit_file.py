"""The audit log file: every row of the ledger's audit table, once, in order, as one JSON
line (issue #19).

Every change of money or access writes its audit row in the same ledger transaction as
the change (payment credited or revoked, spend, authid activated or deactivated, session
opened, closed or cut, ban added or lifted, each manual command with the unix user who
ran it). watchd follows the table by id and appends the new rows here, so the file never
holds a change the ledger rolled back. It resumes after the last id in the file (or in
the newest rotated one), so a restart writes nothing twice and skips nothing.

    {"id": 41, "time": "2024-05-01T12:00:03.120Z", "at": 1714564803.12,
     "actor": "lthnctl:alice", "event": "granted", "authid": "1A0011...",
     "detail": {"amount": 10000000, "reason": "support ticket 12"}}

Anonymised by default (`audit.anonymise`), like Lethean's audit log: an authid is cut to
its first six characters, and a source address is replaced by a hash of its /24 (IPv4)
or /48 (IPv6) network salted with a per-node secret (`state_dir/audit.salt`), so lines
of one network can be told apart from another's without naming it. Rotated by size
(`audit.max_bytes`, keeping `audit.backups` files: audit.log.1 is the newest old one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from lthn.config import Config
from lthn.ledger import AuditRow, Ledger
from lthn.sources import network_of

log = logging.getLogger(__name__)

ADDRESS_KEYS = ("source", "ip", "address")
BATCH = 1000


def load_salt(path: Path) -> bytes:
    """The node's secret salt, made (0600) the first time."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    salt = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(salt + "\n")
    return bytes.fromhex(salt)


def anonymise_address(text: str, salt: bytes) -> str:
    network = network_of(text)
    if network is None:
        return "" if not text else "unparsed-" + _hash(text, salt)
    return f"net{network.version}-" + _hash(str(network), salt)


def _hash(text: str, salt: bytes) -> str:
    return hashlib.sha256(salt + text.encode()).hexdigest()[:16]


def truncate_authid(authid: str) -> str:
    return authid[:6] + "..." if len(authid) > 6 else authid


def line_of(row: AuditRow, anonymise: bool, salt: bytes) -> dict[str, Any]:
    detail = dict(row.detail)
    authid = row.authid
    if anonymise:
        authid = truncate_authid(authid)
        for key in ADDRESS_KEYS:
            if isinstance(detail.get(key), str):
                detail[key] = anonymise_address(detail[key], salt)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(row.at))
    return {"id": row.id, "time": f"{stamp}.{int(row.at % 1 * 1000):03d}Z", "at": row.at,
            "actor": row.actor, "event": row.event, "authid": authid, "detail": detail}


class AuditFile:
    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.path = config.audit_log_path
        self.max_bytes = config.audit.max_bytes
        self.backups = config.audit.backups
        self.anonymise = config.audit.anonymise
        self.ledger = ledger
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.salt = load_salt(config.state / "audit.salt")
        self.last_id = self.resume_point()
        self.written = 0

    def resume_point(self) -> int:
        """The id of the last line written (audit.log, else the newest rotated file); a
        torn last line (a crash mid-write) is passed over for the one before it."""
        for path in (self.path, self.rotated(1)):
            for line in reversed(tail_lines(path)):
                try:
                    return int(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: skipping a torn or foreign line at its end", path)
        return 0

    def rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def follow(self) -> int:
        """Append every audit row after the last written; returns how many."""
        total = 0
        while True:
            rows = self.ledger.audit_after(self.last_id, BATCH)
            if not rows:
                return total
            self.append([json.dumps(line_of(r, self.anonymise, self.salt), sort_keys=True)
                         for r in rows])
            self.last_id = rows[-1].id
            total += len(rows)
            self.written += len(rows)

    def append(self, lines: list[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size and size + len(data) > self.max_bytes:
            self.rotate()
        elif size and not _ends_with_newline(self.path):
            data = b"\n" + data   # after a torn line: start on a line of its own
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)   # an audit line must survive what the ledger survives
        finally:
            os.close(fd)

    def rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.<backups> (the oldest goes)."""
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        self.rotated(self.backups).unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            if self.rotated(n).exists():
                os.replace(self.rotated(n), self.rotated(n + 1))
        os.replace(self.path, self.rotated(1))


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def tail_lines(path: Path, size: int = 65536) -> list[str]:
    """The non-empty lines in the last `size` bytes of a file (the first may be cut)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            data = fh.read()
    except FileNotFoundError:
        return []
    return [x.decode(errors="replace") for x in data.split(b"\n") if x.strip()]
