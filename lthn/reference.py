"""Reference tables in README.md, written from the config schema, the bus catalogue, the
program table and the refusal catalogue.

    python -m lthn.reference config      # the config reference (Markdown table)
    python -m lthn.reference catalogue   # every bus message type
    python -m lthn.reference programs    # every program supervisord runs
    python -m lthn.reference refusals    # every X-LTHN-Status code a client may get
    python -m lthn.reference commands    # every lthnctl command
    python -m lthn.reference requests    # every request a daemon answers (lthn.requests)
    python -m lthn.reference reload      # what a change of each setting needs

tests/test_readme.py fails when README.md's copies differ from what this prints, so the
README cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

from lthn.config import Config
from lthn.config_changes import reference_table as reload_table
from lthn.messages import CATALOGUE, field_types
from lthn.node.programs import readme_table
from lthn.refusals import reference_table as refusals_table
from lthn.schema import describe, type_name, walk


def _default(field: dataclasses.Field, hint: typing.Any) -> str:
    if dataclasses.is_dataclass(hint):
        return ""
    if field.default is not dataclasses.MISSING:
        return f"`{describe(field.default)}`"
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return "`[]`" if value == [] else f"`{value}`"
    return "**required**"


def config_table() -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, hint, field in walk(Config):
        if not field.init:
            continue
        doc = field.metadata.get("doc", "")
        rows.append(f"| `{path}` | {type_name(hint)} | {_default(field, hint)} | {doc} |")
    return "\n".join(rows) + "\n"


def catalogue_table() -> str:
    rows = ["| topic | fields | meaning |", "| --- | --- | --- |"]
    for topic, cls in sorted(CATALOGUE.items()):
        fields = ", ".join(f"{name}: {kind.__name__}" for name, kind in field_types(cls).items())
        rows.append(f"| `{topic}` v{cls.version} | {fields} | {cls.__doc__} |")
    return "\n".join(rows) + "\n"


def commands_table() -> str:
    from lthn.ctl.cli import summary
    from lthn.ctl.commands import COMMANDS
    rows = ["| command | what it does |", "| --- | --- |"]
    for module in COMMANDS:
        rows.append(f"| `lthnctl {module.NAME}` | {summary(module.__doc__ or '')} |")
    return "\n".join(rows) + "\n"


def requests_table() -> str:
    from lthn import requests
    rows = ["| request | fields | reply | meaning |", "| --- | --- | --- | --- |"]
    for name, cls in sorted(requests.CATALOGUE.items()):
        fields = ", ".join(f"{n}: {k.__name__}" for n, k in requests.field_types(cls).items())
        reply = ", ".join(f"{n}: {k.__name__}"
                          for n, k in requests.field_types(cls.reply).items())
        doc = " ".join((cls.__doc__ or "").split())
        rows.append(f"| `{name}` v{cls.version} | {fields or '-'} | {reply} | {doc} |")
    return "\n".join(rows) + "\n"


TABLES = {"config": config_table, "catalogue": catalogue_table, "programs": readme_table,
          "refusals": refusals_table, "commands": commands_table,
          "requests": requests_table, "reload": reload_table}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in TABLES:
        print(f"usage: python -m lthn.reference {{{','.join(TABLES)}}}", file=sys.stderr)
        return 2
    print(TABLES[args[0]](), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
