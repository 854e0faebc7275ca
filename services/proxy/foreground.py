"""What lthn-haproxy and lthn-squid share: render the config, check it with the real
program, then become that program so supervisord's signals and exit status are its own."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lthn.cli_args import parse_with_config
from lthn.config import Config
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK


def parse(description: str, argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    """`-c/--config` and `-t/--test`; the config loaded (exit 2 on a mistake), logs set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-t", "--test", action="store_true",
                        help="write and check the config, then exit without starting")
    return parse_with_config(parser, argv)


@dataclass(frozen=True)
class ForegroundProgram:
    """A real program the node writes a config for, then becomes."""
    name: str                                     # the executable, also its Debian package
    prepare: Callable[[Config], Path]             # writes what it needs; the config's path
    check: Callable[[Path], tuple[bool, str]]     # (valid, the program's own words)
    command: Callable[[Path], list[str]]          # how it runs in the foreground
    config_errors: tuple[type[Exception], ...]    # from prepare: the operator's mistake
    failures: tuple[type[Exception], ...]         # from prepare: anything else that failed

    def run(self, config: Config, test_only: bool) -> int:
        """Exit codes as the daemons'; with `test_only`, stop after the check."""
        if shutil.which(self.name) is None:
            print(f"Error: {self.name} is not installed (apt-get install {self.name})",
                  file=sys.stderr)
            return EXIT_FAILED
        try:
            path = self.prepare(config)
        except self.config_errors as exc:
            print(f"Error: {config.source}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except self.failures as exc:
            print(f"Error: cannot prepare {self.name}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        ok, output = self.check(path)
        if not ok:
            print(f"Error: {path}: {self.name} refuses the generated config:\n{output}",
                  file=sys.stderr)
            return EXIT_FAILED
        if test_only:
            print(f"{path}: configuration is valid")
            return EXIT_OK
        argv = self.command(path)
        sys.stdout.flush()
        os.execvp(argv[0], argv)
        return EXIT_FAILED  # not reached: exec replaced this process
