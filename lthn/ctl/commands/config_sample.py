"""Print a commented sample config with every setting, its default and its meaning."""

from __future__ import annotations

import argparse

from lthn.config_sample import sample
from lthn.exits import EXIT_OK

NAME = "config sample"
NEEDS_CONFIG = False


def arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print(sample(), end="")
    return EXIT_OK
