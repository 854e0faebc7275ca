"""The node software's version, as installed (setup.cfg's `version`)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("lthn-exit-node")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"
