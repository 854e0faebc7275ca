"""Writing a file that another program may read at any moment."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Replace `path` with `text`: a reader sees the old file or the new one, never half of
    it (written beside it, then renamed over it). `mode` sets its permission bits before
    the rename; without it they follow the umask. Not fsynced: for rendered configs and
    caches, not for money (that is the ledger's). Each writer has its own temporary name:
    two programs writing the same file at once (lthn-haproxy and firewalld at a start)
    must not rename each other's temporary file away."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
