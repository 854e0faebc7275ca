"""README.md stays true: its reference tables are what the code prints, and it opens with
the two commands (demo, tests) that CI runs too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lthn.reference import TABLES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(TABLES))
def test_reference_table_is_generated_from_the_code(name):
    match = re.search(rf"<!-- reference:{name} -->\n(.*?)<!-- /reference:{name} -->", README,
                      re.S)
    assert match, f"README.md lacks the {name} reference markers"
    assert match.group(1) == TABLES[name](), \
        f"README.md's {name} table is stale: paste `python -m lthn.reference {name}`"


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block and README.index("```sh") < README.index("\n## ")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()
                if line.strip()]
    assert commands == ["./scripts/setup && .venv/bin/lthn-node demo",
                        "./scripts/setup && .venv/bin/python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/setup\n" in ci
    assert ".venv/bin/python -m pytest -q" in ci
