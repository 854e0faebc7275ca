"""lthnctl: the operator's command line. Each command is a module in lthn/commands/."""

from __future__ import annotations

import argparse
import sys

from lthn.cli_args import config_argument
from lthn.ctl.commands import COMMANDS
from lthn.ctl.context import CommandError


def summary(doc: str) -> str:
    """A command's one-line help: the first sentence of its docstring."""
    first = " ".join(doc.split("\n\n")[0].split())
    end = first.find(". ")
    return first[:end + 1] if end > 0 else first


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lthnctl", description="Operate a Lethean exit node.")
    config_argument(parser)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    subgroups: dict[str, argparse._SubParsersAction] = {}
    for module in COMMANDS:
        group, _, verb = module.NAME.partition(" ")
        doc = (module.__doc__ or "").strip()
        if not verb:
            # a one-word command (`lthnctl status`)
            sub = groups.add_parser(group, help=summary(doc), description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
            module.arguments(sub)
            sub.set_defaults(module=module)
            continue
        if group not in subgroups:
            holder = groups.add_parser(group, help=f"{group} commands")
            subgroups[group] = holder.add_subparsers(dest="verb", metavar="VERB", required=True)
        sub = subgroups[group].add_parser(verb, help=summary(doc), description=doc,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        module.arguments(sub)
        sub.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "module", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.module.run(args)
    except CommandError as exc:
        # one line, no traceback: what is wrong and, where it helps, what to do
        print(f"Error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    raise SystemExit(main())
