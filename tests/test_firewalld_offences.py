"""firewalld's reading of haproxy's per-source counters, on real `show table` answers."""

from __future__ import annotations

import pytest

from lthn.refusals import RefusalKind
from services.firewalld.offences import TableAnswerError, parse_show_table
from tests.fixtures.transcripts import blocks

CASES = blocks("haproxy_show_sources.txt")


@pytest.mark.parametrize(("title", "expected", "text"), CASES, ids=[c[0] for c in CASES])
def test_show_table_answers_parse(title, expected, text):
    if expected == "error":
        with pytest.raises(TableAnswerError):
            parse_show_table(text)
        return
    got = [[c.source, c.offences, {k.name: n for k, n in c.in_window.items() if n},
            c.conn_cur, c.requests] for c in parse_show_table(text)]
    assert got == expected


def test_cumulative_counts_are_kept_apart_from_the_window():
    (entry, _) = parse_show_table(CASES[0][2])
    assert entry.total[RefusalKind.BAD_AUTHID] == 30
