"""The `-c/--config` option every program takes, and loading the file it names.

A mistake in the file is one `Error: ...` line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from lthn import config as config_mod
from lthn import logs
from lthn.config import Config
from lthn.exits import EXIT_CONFIG
from lthn.schema import ConfigError

DEFAULT_CONFIG = os.environ.get("LTHN_CONFIG", "/etc/lthn/node.yaml")
CHECK_HINT = "(run `lthnctl -c FILE config check` to check a config without starting)"


def config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"node config file (default {DEFAULT_CONFIG}, or $LTHN_CONFIG)")


def load_config_or_exit(path: str, hint: bool = True) -> Config:
    """Load the config; on a mistake print `Error: ...` (and, with `hint`, how to check a
    config without starting) to stderr and exit 2."""
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if hint:
            print(CHECK_HINT, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None,
                      ) -> tuple[argparse.Namespace, Config]:
    """A program's start: `-c/--config` added to `parser`, `argv` parsed, the config loaded
    (exit 2 on a mistake) and logging set to its level."""
    config_argument(parser)
    args = parser.parse_args(argv)
    config = load_config_or_exit(args.config)
    logs.setup(config.log_level)
    return args, config
