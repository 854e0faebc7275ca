"""The last step of lthn-haproxy and lthn-squid: check the written config, then become
the real program so supervisord's signals and exit status are its own."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from lthn.daemon import EXIT_FAILED, EXIT_OK


def check_then_exec(program: str, path: Path, check: Callable[[Path], tuple[bool, str]],
                    argv: list[str], test_only: bool) -> int:
    """Exit codes as the daemons'; with `test_only`, stop after the check."""
    ok, output = check(path)
    if not ok:
        print(f"Error: {path}: {program} refuses the generated config:\n{output}",
              file=sys.stderr)
        return EXIT_FAILED
    if test_only:
        print(f"{path}: configuration is valid")
        return EXIT_OK
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return EXIT_FAILED  # not reached
