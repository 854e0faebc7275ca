"""Logging set-up: stdlib logging to stdout, for supervisord to capture."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # supervisord reads stdout through a pipe: flush every line so logs are never late
    sys.stdout.reconfigure(line_buffering=True)
