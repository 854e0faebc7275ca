"""Writing a file that another program may read at any moment."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Replace `path` with `text`: a reader sees the old file or the new one, never half of
    it (written beside it, then renamed over it). `mode` sets its permission bits before
    the rename; without it they follow the umask. Not fsynced: for rendered configs and
    caches, not for money (that is the ledger's)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
